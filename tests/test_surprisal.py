"""LM self-information with the real embedded model."""

import numpy as np
import pytest

from tokensieve.scoring.segment import segment
from tokensieve.scoring.surprisal import text_surprisal
from tokensieve.text.scorers import (
    ContrastiveScorer,
    EncoderRelevanceScorer,
    ScoringContext,
    SurprisalScorer,
)

pytestmark = pytest.mark.model

MUSEUM = ("The museum opens at nine in the morning. Tickets cost twelve euros for adults. "
          "The building was designed by an architect from Lisbon. Children under six enter "
          "for free. The cafe on the top floor serves lunch until three.")


def test_rare_word_scores_higher_than_the():
    text = "The cat sat on the mat near the xylophone."
    seg = segment(text)
    scores = SurprisalScorer().score(seg.words, "word", ScoringContext(text))
    words = [text[a:b] for a, b in seg.words]
    assert scores[words.index("xylophone.")] > 3 * scores[words.index("the")]


def test_context_is_carried_across_windows(lm):
    lead = "It was a quiet day in the village and nothing much happened there. " * 3
    sentence = "Zorblax quivered under the violet moons of Pellucidar-9. "
    text = lead + sentence + "Then, again: " + sentence
    repeat = np.array([[len(text) - len(sentence), len(text)]])
    n = len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert 64 < n < 128  # two windows of 64; the repeat sits right after the boundary
    carried = text_surprisal(lm.model, lm.tokenizer, text, window=64, overlap=32)
    cut = text_surprisal(lm.model, lm.tokenizer, text, window=64, overlap=0)
    # the repeat is predictable only if the first occurrence is carried into its window
    assert carried.aggregate(repeat, "mean")[0] < 0.6 * cut.aggregate(repeat, "mean")[0]
    assert np.isfinite(carried.surprisal).all() and np.isfinite(cut.surprisal).all()


def test_sliding_window_agrees_with_one_window(lm, report_text):
    one = text_surprisal(lm.model, lm.tokenizer, report_text, window=2048)
    slid = text_surprisal(lm.model, lm.tokenizer, report_text, window=256, overlap=128)
    assert len(one.surprisal) == len(slid.surprisal) > 600
    assert np.corrcoef(one.surprisal, slid.surprisal)[0, 1] > 0.9


@pytest.mark.parametrize("question,answer", [
    ("How much does an adult ticket cost?", 1),
    ("Who designed the building?", 2),
    ("When does the museum open?", 0),
])
def test_question_raises_the_answering_sentence(question, answer):
    spans = segment(MUSEUM).spans("sentence")
    ctx = ScoringContext(MUSEUM, question)
    contrast = ContrastiveScorer().score(spans, "sentence", ctx)
    relevance = EncoderRelevanceScorer().score(spans, "sentence", ctx)
    assert int(np.argmax(contrast)) == answer
    assert int(np.argmax(relevance)) == answer
