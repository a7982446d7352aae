"""The learned keep-classifier (method 'learned'): its windows, its states, the shipped head,
and compression through it (budget, faithfulness, protection, formats, bad input)."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensieve import compress
from tokensieve.errors import ModelNotFoundError
from tokensieve.text import classifier

pytestmark = pytest.mark.model


@given(st.integers(0, 3000), st.integers(8, 600), st.integers(0, 200))
@settings(max_examples=200, deadline=None)
def test_windows_score_every_token_once(n, window, overlap):
    overlap = min(overlap, window // 2)
    spans = classifier.windows(n, window, overlap)
    scored = np.zeros(n, int)
    for start, end, first in spans:
        assert 0 <= start <= first <= end <= n and end - start <= window
        assert first - start <= overlap
        scored[first:end] += 1
    assert (scored == 1).all()


def test_long_text_states_match_a_short_read_and_batching():
    """A text longer than one window gets a state for every token; the first window's
    tokens equal those of reading the first part alone, and the batch size changes nothing."""
    words = " ".join(f"Item{i} costs {i * 7} dollars in Zone-{i % 13}." for i in range(120))
    offsets, states = classifier.token_states(words, 2)
    assert len(offsets) > 2 * classifier.WINDOW
    assert (states.abs().sum(1) > 0).all()
    _, one_by_one = classifier.token_states(words, 2, batch=1)
    torch.testing.assert_close(states, one_by_one, rtol=1e-4, atol=1e-4)
    cut = int(offsets[classifier.WINDOW - 1, 1])
    _, head = classifier.token_states(words[:cut], 2)
    torch.testing.assert_close(states[:classifier.WINDOW], head, rtol=1e-4, atol=1e-4)


def test_shipped_head_ranks_names_and_codes_above_function_words():
    text = ("The contract with Margaret Okonkwo was signed on 14 March 2031 and it covers "
            "the warehouse at unit QX-4471 near the harbour of Valparaiso.")
    spans = np.array([(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)])
    scores = classifier.keep_scores(text).aggregate(spans, "max")
    words = [text[s:e].strip(".,") for s, e in spans]
    by_word = dict(zip(words, scores, strict=True))
    content = min(by_word[w] for w in ("Okonkwo", "2031", "QX-4471", "Valparaiso"))
    function = max(by_word[w] for w in ("the", "was", "on", "and", "it", "at", "of"))
    assert content > function


def test_shipped_record_says_how_it_was_trained_and_validated():
    record = json.loads((classifier.DATA_DIR / f"{classifier.HEAD_NAME}.json").read_text())
    assert record["layers"] in range(1, 7) and record["passages"]["valid"] > 0
    assert record["loss_curve"][-1] < record["loss_curve"][0]
    assert "tokensieve text-classifier train" in record["command"]


def test_learned_compression_is_exact_faithful_and_keeps_protected(report_text, lm_tokenizer):
    r = compress(report_text, keep=0.3, method="learned", protect=[r"\$\d+(?:\.\d+)? million"])
    n = len(lm_tokenizer(r.text, add_special_tokens=False)["input_ids"])
    assert n == r.compressed_tokens <= r.target_tokens
    assert r.compressed_tokens >= 0.8 * r.target_tokens
    assert "$48.2 million" in r.text
    assert "".join(report_text[s:e] for s, e in r.kept_spans) == r.text   # spans of the input
    assert all(a[1] <= b[0] for a, b in zip(r.kept_spans, r.kept_spans[1:], strict=False))
    again = compress(report_text, keep=0.3, method="learned",
                     protect=[r"\$\d+(?:\.\d+)? million"])
    assert again.text == r.text


def test_learned_needs_no_question_and_ignores_one(report_text):
    a = compress(report_text, keep=0.4, method="learned")
    b = compress(report_text, keep=0.4, method="learned", question="What was the Q3 revenue?")
    assert a.text == b.text


def test_learned_keeps_json_valid():
    doc = {"title": "Quarterly field report", "notes": [
        "The audit of depot KX-204 in Rotterdam found 37 damaged pallets and two missing "
        "invoices, which the regional manager Ingrid Solberg has since recovered."] * 3}
    r = compress(json.dumps(doc), keep=0.6, method="learned", format="json")
    out = json.loads(r.text)
    assert set(out) == {"title", "notes"} and r.compressed_tokens <= r.target_tokens


def test_missing_head_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_KEEP_HEAD", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="tokensieve text-classifier train"):
        compress("Some words to compress here, and more words after them.", keep=0.5,
                 method="learned")


def test_head_applied_per_batch_equals_head_on_all_states():
    text = " ".join(f"Order {i}: ship part AB-{i:04d} to Lisbon by Friday." for i in range(80))
    bundle = classifier.load_head()
    _, states = classifier.token_states(text, bundle.layers)
    _, values = classifier.token_states(text, bundle.layers, head=bundle.head)
    with torch.inference_mode():
        torch.testing.assert_close(values, bundle.head(states), rtol=1e-4, atol=1e-5)
