"""Whitespace runs (blank lines, indentation, tabs, no-break and zero-width spaces) between
sentences: they cost what the target tokenizer says, go first, and never take a sentence's
words with them; when the words fit the budget, every one of them is kept (issue 24)."""

from __future__ import annotations

import pytest
import regex
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokensieve import InputError, compress
from tokensieve.models import load_tokenizer

SENTENCES = [
    "Revenue was 12.5 million.", "The weather was fine.", "Costs rose by 3 percent in the "
    "quarter.", "The board met twice.", "Margins held at 38.5%.", "Shipments reached 4,200 "
    "units!", "Was the forecast right?", "Dr. Lee signed the report.",
]
SPACES = [" ", "\n", "\t", "\u00a0", "\u200b"]
QUESTION = "What was the revenue?"
# what separates words: whitespace and the zero-width space
_SEP = regex.compile(r"[\s\u200b]+")


def words(text: str) -> list[str]:
    return [w for w in _SEP.split(text) if w]


@st.composite
def runs(draw) -> str:
    """A run of whitespace: a few pieces, each one kind of space repeated up to 400 times."""
    pieces = draw(st.lists(st.tuples(st.sampled_from(SPACES), st.integers(1, 400)),
                           min_size=1, max_size=4))
    return "".join(c * n for c, n in pieces)


@st.composite
def spaced(draw) -> tuple[list[str], list[str]]:
    sents = draw(st.lists(st.sampled_from(SENTENCES), min_size=2, max_size=5))
    gaps = [draw(runs()) for _ in range(len(sents) - 1)]
    return sents, gaps


ISSUE_FLOOD = (["Revenue was 12.5 million. ", "The weather was fine."],
               ["\n" * 2000 + "\t" * 1000])
ISSUE_LINES = (["Revenue was 12.5 million.", "The weather was fine. Costs rose by 3 percent "
                "in the quarter."], ["\n\n \n" * 20])
ISSUE_LEAD = (["", "Revenue was 12.5 million.", "The weather was fine. Costs rose by 3 percent "
               "in the quarter."], [" " * 3000, "\n\n \n" * 20])


@pytest.mark.model
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=spaced(), granularity=st.sampled_from(["auto", "sentence", "word"]),
       question=st.sampled_from([None, QUESTION]), method=st.just("wordfreq"),
       slack=st.integers(0, 40))
@example(case=ISSUE_FLOOD, granularity="auto", question=QUESTION, method="default", slack=185)
@example(case=ISSUE_LINES, granularity="auto", question=None, method="default", slack=0)
@example(case=ISSUE_LINES, granularity="auto", question=QUESTION, method="default", slack=0)
@example(case=ISSUE_LEAD, granularity="auto", question=None, method="default", slack=0)
@example(case=ISSUE_LEAD, granularity="sentence", question=QUESTION, method="default", slack=0)
@example(case=ISSUE_LINES, granularity="word", question=None, method="default", slack=0)
def test_whitespace_goes_first_and_words_stay(case, granularity, question, method, slack):
    sents, gaps = case
    text = sents[0] + "".join(g + s for g, s in zip(gaps, sents[1:], strict=True))
    tok = load_tokenizer("default")
    # the words' own cost: the sentences one blank line apart, plus a token per seam
    content = len(tok("\n\n".join(s.strip() for s in sents if s.strip()),
                      add_special_tokens=False)["input_ids"]) + len(sents)
    target = content + slack
    r = compress(text, target_tokens=target, question=question, method=method,
                 granularity=granularity)
    assert r.compressed_tokens <= target
    assert r.compressed_tokens == len(tok(r.text, add_special_tokens=False)["input_ids"])
    assert words(r.text) == words(text), (r.original_tokens, target, r.text[:200])
    pos = 0
    for s, e in r.kept_spans:  # spans of the input, in order
        assert s >= pos and e > s
        pos = e
    assert "".join(text[s:e] for s, e in r.kept_spans) == r.text


@pytest.mark.parametrize("text", ["\u200b\u200b", " \u200b\n\t\u00a0"])
def test_only_blank_or_zero_width_spaces_is_an_input_error(text):
    with pytest.raises(InputError, match="only whitespace"):
        compress(text, keep=0.5, method="wordfreq")
