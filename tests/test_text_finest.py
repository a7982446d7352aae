"""``compress(finest=...)``: how far down granularity='auto' goes."""

import pytest

from tokensieve import compress
from tokensieve.errors import UsageError

pytestmark = pytest.mark.model

Q = "What was the Q3 revenue?"


def test_question_default_stops_at_sentences_and_finest_word_goes_on(report_text):
    whole = compress(report_text, keep=0.1, question=Q)
    words = compress(report_text, keep=0.1, question=Q, finest="word")
    assert whole.granularity.endswith("sentence") and words.granularity.endswith("word")
    assert words.compressed_tokens <= words.target_tokens == whole.target_tokens
    # word pruning keeps pieces of more sentences than whole-sentence selection can
    assert len(words.kept_spans) > len(whole.kept_spans)


@pytest.mark.parametrize("bad", ["token", "paragraph", 3])
def test_bad_finest_is_one_clear_error(bad):
    with pytest.raises(UsageError, match="finest must be 'sentence' or 'word'"):
        compress("One sentence here. Another one there.", keep=0.5, finest=bad)
