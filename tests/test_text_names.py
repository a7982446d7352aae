"""Names kept whole (``keep_names``; always for method 'learned')."""

import time

import pytest

from tokensieve import compress
from tokensieve.text.names import name_spans

TEXT = ("Yesterday the board of Northwind Robotics met Margaret Okonkwo and Dr. Ravi Shankar "
        "Iyer in Porto Alegre. They agreed that the New York Stock Exchange listing waits. "
        "Costs rose, but the harbour office in São Paulo stays open. Nothing else changed.")


def test_name_spans_find_runs_of_capitalised_words():
    names = [TEXT[s:e] for s, e in name_spans(TEXT)]
    assert names == ["Northwind Robotics", "Margaret Okonkwo", "Dr. Ravi Shankar Iyer",
                     "Porto Alegre", "New York Stock Exchange", "São Paulo"]
    assert name_spans("no names here at all") == []


def test_name_spans_are_linear_on_hostile_input():
    hostile = ("Aa " * 200_000) + "b"
    t = time.perf_counter()
    spans = name_spans(hostile)
    assert time.perf_counter() - t < 5 and len(spans) > 1000


def _whole_or_absent(text, out):
    for s, e in name_spans(text):
        name = text[s:e]
        words = name.split()
        kept = [w for w in words if w in out.split()]
        assert name in out or not kept, (name, out)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7])
def test_keep_names_keeps_each_name_whole_or_drops_it(keep):
    r = compress(TEXT, keep=keep, method="wordfreq", granularity="word", keep_names=True)
    assert r.compressed_tokens <= r.target_tokens
    _whole_or_absent(TEXT, r.text)


@pytest.mark.model
@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_learned_keeps_names_whole(keep):
    r = compress(TEXT, keep=keep, method="learned")
    assert r.compressed_tokens <= r.target_tokens and r.granularity == "word"
    _whole_or_absent(TEXT, r.text)
