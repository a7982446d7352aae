"""kv.answer on the embedded model, protection, decode-time caps, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import random_ids, tiny_model

from tokensieve import InputError, UsageError, kv


def test_answer_reuses_one_compressed_context(lm, report_text):
    model, tok = lm.model, lm.tokenizer
    qs = ["What was the Q3 revenue?", "How many paying sites does the subscription have?"]
    full = kv.answer(model, tok, report_text, qs, keep=1.0, max_new_tokens=16)
    half = kv.answer(model, tok, report_text, qs, keep=0.5, max_new_tokens=16)
    assert full.stored_bytes == full.full_bytes
    assert half.kept_fraction == pytest.approx(0.5, abs=0.01)
    # ratio 0 through the split context/question path == one plain generate on the prompt
    ctx, q = kv.chat_parts(tok, report_text, qs[1])
    ids = torch.tensor([ctx + q])
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                               do_sample=False)
    assert full.answers[1] == tok.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(half.answers) == 2 and all(a.strip() for a in half.answers)
    aware = kv.answer(model, tok, report_text, qs[1:], keep=0.25, query_aware=True,
                      max_new_tokens=16)
    assert aware.answers[0].strip()
    assert aware.kept_fraction < 0.35  # context + question stored, a quarter of the context


def test_protected_span_survives_every_layer():
    model = tiny_model("llama")
    with kv.compress(model, "knorm", keep=0.1, protect=[(20, 30)]) as s, torch.no_grad():
        model(random_ids(100))
    for layer in s.last_cache.layers:
        for h in range(layer.positions.shape[1]):
            assert set(range(20, 30)) <= set(layer.positions[0, h].tolist())


def test_max_size_caps_the_cache_during_generation():
    model = tiny_model("mistral")
    ids = random_ids(30)
    with kv.compress(model, "tova", keep=1.0, max_size=24) as s, torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                             min_new_tokens=20, do_sample=False)
    cache = s.last_cache
    assert out.shape[1] == 50
    assert cache.get_seq_length() == 49
    assert all(layer.keys.shape[-2] <= 24 for layer in cache.layers)


def test_tiny_context_keeps_at_least_one_entry():
    model = tiny_model("llama")
    with kv.compress(model, "snapkv", keep=0.1) as s, torch.no_grad():
        model(random_ids(3))
    assert all(layer.keys.shape[-2] >= 1 for layer in s.last_cache.layers)


def test_hooks_are_removed_after_the_block():
    model = tiny_model("llama")
    ids = random_ids(40)
    with torch.no_grad():
        before = model(ids, use_cache=True).past_key_values
        with kv.compress(model, keep=0.5):
            pass
        after = model(ids, use_cache=True).past_key_values
    assert type(before) is type(after) is not kv.CompressedCache
    assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize("keep", [-0.1, 0.0, 1.5, math.nan, "0.5", True, None])
def test_bad_keep(keep):
    with pytest.raises(UsageError, match=r"keep .*\(0, 1\]"):
        with kv.compress(tiny_model("llama"), keep=keep):
            pass


def test_the_old_ratio_spelling_names_the_conversion():
    """kv's ``ratio`` was the fraction removed; passing it must not silently invert."""
    with pytest.raises(UsageError, match=r"keep=0.25"):
        with kv.compress(tiny_model("llama"), ratio=0.75):
            pass


def test_answer_validates_before_running(lm):
    with pytest.raises(UsageError, match="fraction of tokens to keep"):
        kv.answer(lm.model, lm.tokenizer, "Some text.", ["Why?"], keep="0.5")
    with pytest.raises(UsageError, match="unknown option"):
        kv.answer(lm.model, lm.tokenizer, "Some text.", ["Why?"], colour="red")


@pytest.mark.parametrize("bad", [{"policy": "h3o"}, {"max_size": 2}, {"sinks": -1},
                                 {"protect": [(5, 2)]}, {"protect": ["ab"]}])
def test_bad_options(bad):
    with pytest.raises(UsageError):
        with kv.compress(tiny_model("llama"), **bad):
            pass


def test_unknown_policy_lists_the_choices():
    with pytest.raises(UsageError, match="snapkv"):
        kv.get_policy("h3o")


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UsageError, match="supported: llama, mistral, qwen2"):
        with kv.compress(model):
            pass


def test_flash_attention_is_refused_with_the_fix():
    model = tiny_model("llama")
    model.config._attn_implementation = "flex_attention"
    try:
        with pytest.raises(UsageError, match="attn_implementation='sdpa'"):
            with kv.compress(model):
                pass
    finally:
        model.set_attn_implementation("sdpa")


def test_empty_context(lm):
    with pytest.raises(InputError, match="context is empty"):
        kv.answer(lm.model, lm.tokenizer, "   ", ["Why?"])
    with pytest.raises(InputError, match="question"):
        kv.answer(lm.model, lm.tokenizer, "Some text.", [""])
    model = tiny_model("llama")
    with pytest.raises(InputError, match="empty"):
        with kv.compress(model, keep=0.5), torch.no_grad():
            model(torch.zeros(1, 0, dtype=torch.long))


@pytest.mark.parametrize("policy", ["knorm", "snapkv", "adakv"])
def test_whole_spans_are_never_cut(policy):
    model = tiny_model("llama")
    spans = [(10, 17), (30, 37), (50, 57), (70, 77)]
    with kv.compress(model, policy, keep=0.3, whole=spans) as s, torch.no_grad():
        model(random_ids(100, seed=11))
    for layer in s.last_cache.layers:
        _, _, pos = layer.dense_view()
        valid = layer.slot_valid()
        for h in range(pos.shape[1]):
            kept = set((pos[0, h][valid[0, h]] if valid is not None else pos[0, h]).tolist())
            for a, b in spans:
                inside = kept & set(range(a, b))
                assert not inside or inside == set(range(a, b))


def test_number_spans_cover_multi_token_numbers(lm_tokenizer):
    ctx = "The special magic number for dog is: 7345212. Call 555-1234 on 2026-11-29."
    ids, _ = kv.chat_parts(lm_tokenizer, ctx, "?")
    found = [lm_tokenizer.decode(ids[a:b]) for a, b in kv.number_spans(lm_tokenizer, ctx)]
    assert found == ["7345212", "555-1234", "2026-11-29"]


def test_spans_outside_the_context_or_over_budget():
    from tokensieve import BudgetError

    model = tiny_model("llama")
    with pytest.raises(UsageError, match="past the context, which has 50 tokens"):
        with kv.compress(model, keep=0.5, protect=[(40, 60)]), torch.no_grad():
            model(random_ids(50))
    with pytest.raises(BudgetError, match="over by"):
        with kv.compress(model, keep=0.1, protect=[(0, 30)]), torch.no_grad():
            model(random_ids(50))


def test_max_size_larger_than_the_context_evicts_nothing():
    model = tiny_model("llama")
    ids = random_ids(30)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                         do_sample=False)
    with kv.compress(model, keep=1.0, max_size=1000) as s:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                             do_sample=False)
    assert torch.equal(ref, out)
    assert s.last_cache.layers[0].keys.shape[-2] == out.shape[1] - 1


def test_policy_settings_from_a_string():
    p = kv.get_policy("snapkv:window=64,kernel=5")
    assert (p.window, p.kernel) == (64, 5)
    assert kv.get_policy("tova:per_head=true").per_head is True
    with pytest.raises(UsageError, match="bad settings"):
        kv.get_policy("tova:colour=red")
    with pytest.raises(UsageError, match="key=value"):
        kv.get_policy("tova:fast")
