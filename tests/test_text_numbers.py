"""keep_numbers means "never cut a number": a number or ID, with the scale word that follows
it, is kept whole or dropped whole; it is not charged to the budget first (issue 17, 6)."""

from __future__ import annotations

import pytest
import regex

from tokensieve import compress
from tokensieve.text.numbers import number_spans

TEXT = ("Q3 revenue was $48.2 million, up 17 percent from $41.2 million a year ago, said the "
        "cheerful finance team of Northwind. Shipments of the PX-400 arm reached 1,130 units "
        "while 12345678.9012 parts were counted twice on 2024-01-15 by the night shift.")


def ws_tokenizer(s: str) -> list[str]:
    return s.split()


def covered(spans, a: int, b: int) -> bool:
    return any(s <= a and b <= e for s, e in spans)


def touched(spans, a: int, b: int) -> bool:
    return any(s < b and a < e for s, e in spans)


def test_number_spans_take_the_scale_word():
    found = [TEXT[a:b] for a, b in number_spans(TEXT)]
    assert found == ["Q3", "48.2 million", "17 percent", "41.2 million", "PX-400", "1,130",
                     "12345678.9012", "2024-01-15"]


@pytest.mark.parametrize("granularity,tokenizer", [("word", ws_tokenizer), ("word", "default"),
                                                   ("token", "default")])
@pytest.mark.parametrize("target", [4, 8, 12, 20, 30])
def test_a_number_is_kept_whole_or_dropped_whole(granularity, tokenizer, target):
    r = compress(TEXT, target_tokens=target, method="wordfreq", granularity=granularity,
                 tokenizer=tokenizer, keep_numbers=True)
    assert r.compressed_tokens <= target
    for a, b in number_spans(TEXT):
        assert covered(r.kept_spans, a, b) or not touched(r.kept_spans, a, b), \
            (TEXT[a:b], r.text)


def test_numbers_are_not_charged_first():
    text = ("Sales were 10, 20, 30, 40, 50, 60, 70, 80, 90 and 100 units in the last ten "
            "weeks of the year.")
    r = compress(text, target_tokens=5, method="wordfreq", tokenizer=ws_tokenizer,
                 keep_numbers=True)
    assert r.compressed_tokens <= 5
    assert not any(u.protected for u in r.scores)


def test_every_number_stays_when_protected_by_a_regex():
    """The old meaning (keep every number) is one regex away, as the README says."""
    r = compress(TEXT, target_tokens=20, method="wordfreq", tokenizer=ws_tokenizer,
                 protect=[r"[-+]?\d+(?:[.,:/-]\d+)*%?"])
    for m in regex.finditer(r"\d+(?:[.,:/-]\d+)*", TEXT):
        assert covered(r.kept_spans, *m.span()), m.group()


@pytest.mark.model
def test_first_readme_command_keeps_whole_sentences(report_text):
    """README command 1: whole sentences, the answer with its "million" (it was word salad
    when every number was charged to the budget first)."""
    r = compress(report_text, keep=0.33, question="What was the Q3 revenue?", keep_numbers=True)
    assert "Q3 revenue was $48.2 million, up 17% from $41.2 million" in r.text
    assert r.compressed_tokens <= r.target_tokens
    for s, e in r.kept_spans:  # every kept stretch starts and ends at a sentence / line edge
        piece = report_text[s:e]
        s, e = s + len(piece) - len(piece.lstrip()), e - len(piece) + len(piece.rstrip())
        assert s == 0 or report_text[s - 1].isspace(), report_text[s:e]
        assert report_text[e - 1] in ".!?:)" or report_text[e:e + 1] in ("\n", ""), \
            report_text[s:e]
