"""Regression tests for what review found in kv (issue 8): each failed before its fix."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_models import random_ids, tiny_model
from transformers import DynamicCache

from tokensieve import UsageError, kv
from tokensieve.kv.attention import LayerInputs
from tokensieve.kv.policies import POLICIES


def _positions(layer) -> list[set[int]]:
    """Stored token positions of each head of batch row 0."""
    _, _, pos = layer.dense_view()
    valid = layer.slot_valid()
    return [set((pos[0, h][valid[0, h]] if valid is not None else pos[0, h]).tolist())
            for h in range(pos.shape[1])]


@torch.no_grad()
def _reference_decode(model, ids, steps, visible):
    """Greedy decoding with the FULL cache and an explicit mask: the query at position p
    sees only ``visible(p)``; returns the tokens and the logits of every step."""
    cache = DynamicCache(config=model.config)
    t = ids.shape[1]
    out = model(ids, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    tokens = [int(out.logits[0, -1].argmax())]
    for _ in range(steps - 1):
        p = t + len(tokens) - 1
        mask = torch.zeros(1, p + 1, dtype=torch.long)
        mask[0, sorted(visible(p))] = 1
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, attention_mask=mask,
                    position_ids=torch.tensor([[p]]), cache_position=torch.tensor([p]),
                    use_cache=True)
        logits.append(out.logits[:, -1])
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, torch.cat(logits)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_max_size_below_sinks_plus_recent_keeps_the_newest_tokens(attn):
    """max_size 12 < 4 sinks + 32 recent: the recent window shrinks to 8, ties go to the
    newest entry, and decoding equals full-cache decoding with an explicit sliding mask."""
    model = tiny_model("llama", attn)
    ids, steps, max_size, sinks = random_ids(40, seed=3), 12, 12, 4
    with kv.compress(model, "streaming_llm", keep=1.0, max_size=max_size, sinks=sinks) as s, \
            torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                             min_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    cache = s.last_cache
    seen = cache.get_seq_length()
    for layer in cache.layers:
        for kept in _positions(layer):
            assert seen - 1 in kept                         # the last generated token
            assert kept == set(range(sinks)) | set(range(seen - (max_size - sinks), seen))

    def visible(p):  # step 0 sees the whole prefill; later steps sinks + newest + itself
        if p == ids.shape[1]:
            return set(range(p + 1))
        return set(range(sinks)) | set(range(p - (max_size - sinks), p + 1))

    tokens, logits = _reference_decode(model, ids, steps, visible)
    assert out.sequences[0, ids.shape[1]:].tolist() == tokens
    assert torch.allclose(torch.cat(out.logits), logits, atol=1e-4)


def test_chunkkv_ranks_afresh_at_every_decode_step(monkeypatch):
    """With max_size the context length repeats every step; the reused chunk ranking must
    still be recomputed for every forward (once per group of ``reuse`` layers)."""
    model = tiny_model("llama")
    calls = []
    original = LayerInputs.window_attention

    def counting(self, w=None, **kw):
        calls.append(self.layer_idx)
        return original(self, w, **kw)

    monkeypatch.setattr(LayerInputs, "window_attention", counting)
    ids, steps = random_ids(30, seed=5), 6
    with kv.compress(model, "chunkkv:reuse=2", keep=1.0, max_size=20), torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                       min_new_tokens=steps, do_sample=False)
    layers = model.config.num_hidden_layers
    # keep=1.0: the prefill scores nothing; each of the steps - 1 decode forwards evicts in
    # every layer, scored once per pair of layers (the stale cache scored once in all)
    assert len(calls) == (steps - 1) * layers // 2


@pytest.mark.parametrize("policy", ["knorm", "tova", "snapkv", "adakv", "random"])
def test_decode_eviction_honours_protect_and_whole(policy):
    model = tiny_model("llama")
    ids, steps = random_ids(60, seed=7), 15
    protect, whole = [(20, 26)], [(30, 36), (40, 46)]
    with kv.compress(model, policy, keep=1.0, max_size=24, recent=4, protect=protect,
                     whole=whole) as s, torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                       min_new_tokens=steps, do_sample=False)
    for layer in s.last_cache.layers:
        for kept in _positions(layer):
            assert set(range(20, 26)) <= kept
            for a, b in whole:
                inside = kept & set(range(a, b))
                assert not inside or inside == set(range(a, b))
        total = sum(len(kept) for kept in _positions(layer))
        assert total <= 24 * model.config.num_key_value_heads  # adakv: per layer, not head


def test_nested_blocks_on_one_model_are_refused():
    model = tiny_model("llama")
    with kv.compress(model, keep=0.5):
        with pytest.raises(UsageError, match="already inside a kv.compress"):
            with kv.compress(model, keep=0.25):
                pass
    with kv.compress(model, keep=0.5):  # the flag is cleared on exit
        pass


@settings(max_examples=40, deadline=None)
@given(policy=st.sampled_from(sorted(POLICIES)), keep=st.floats(0.01, 1.0),
       t=st.integers(8, 120), seed=st.integers(0, 3))
def test_stored_entries_never_exceed_the_budget(policy, keep, t, seed):
    """For every policy and budget: entries stored <= layers x heads x budget per layer."""
    model = tiny_model("llama")
    with kv.compress(model, policy, keep=keep) as s, torch.no_grad():
        model(random_ids(t, seed=seed), use_cache=True)
    cache = s.last_cache
    heads = model.config.num_key_value_heads
    layers = len(cache.compressible_layers())
    budget = s.plan.budget(t)
    assert cache.entries() <= layers * heads * budget


# ------------------------------------------------------------------ information policy


def test_surprisal_from_the_prefill_equals_the_models_own_log_probs():
    from tokensieve.scoring.surprisal import token_surprisal

    model = tiny_model("llama")
    ids = random_ids(50, batch=2, seed=9)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        logp = torch.log_softmax(out.logits.float(), -1)
        ref = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        got = token_surprisal(model, out.hidden_states[-1], ids)
    assert torch.allclose(got[:, 1:], ref, atol=1e-4)
    assert torch.equal(got[:, 0], got[:, 1:].max(-1).values)


def test_information_keeps_units_whole_and_the_most_surprising_one():
    model = tiny_model("llama")
    ids = random_ids(96, seed=4)
    units = [(i, i + 8) for i in range(0, 96, 8)]
    with kv.compress(model, "information", keep=0.5, units=units, sinks=0, recent=0) as s, \
            torch.no_grad():
        out = model(ids, use_cache=True, output_hidden_states=True)
    from tokensieve.scoring.surprisal import token_surprisal

    surprisal = token_surprisal(model, out.hidden_states[-1], ids)[0]
    means = [float(surprisal[a:b].mean()) for a, b in units]
    best = max(range(len(units)), key=means.__getitem__)
    worst = min(range(len(units)), key=means.__getitem__)
    for layer in s.last_cache.layers:
        for kept in _positions(layer):
            assert len(kept) == 48
            assert set(range(*units[best])) <= kept
            assert not kept & set(range(*units[worst]))
            whole = [u for u in units if set(range(*u)) <= kept]
            assert len(whole) == 6   # 48 entries = exactly six whole 8-token units


def test_information_with_a_decode_cap():
    model = tiny_model("llama")
    ids = random_ids(60, seed=2)
    with kv.compress(model, "information", keep=0.5, max_size=20) as s, torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                       min_new_tokens=8, do_sample=False)
    seen = s.last_cache.get_seq_length()
    for layer in s.last_cache.layers:
        for kept in _positions(layer):
            assert len(kept) <= 20 and seen - 1 in kept


def test_text_and_kv_share_one_number_and_id_pattern(lm_tokenizer):
    """keep_numbers keeps whole exactly what kv keeps whole: numbers and letter-digit IDs."""
    from tokensieve.text.numbers import number_spans

    text = "Code Z9K6-4842 and PX-1234 cost 12.5% on 2026-11-29 at 3:45, word v2 ok."
    found = [text[a:b] for a, b in number_spans(text)]
    assert found == ["Z9K6-4842", "PX-1234", "12.5%", "2026-11-29", "3:45", "v2"]
    ids, _ = kv.chat_parts(lm_tokenizer, text, "?")
    whole = [lm_tokenizer.decode(ids[a:b]).strip() for a, b in kv.number_spans(lm_tokenizer, text)]
    assert set(whole) <= set(found) and "Z9K6-4842" in whole and "2026-11-29" in whole


# ------------------------------------------------------------------ model-wide sliding window


def _windowed_mistral(window: int):
    from kv_models import COMMON
    from transformers import AutoModelForCausalLM, MistralConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(**COMMON, sliding_window=window),
                                             attn_implementation="eager")
    model.generation_config.pad_token_id = 0
    return model.eval()


def test_a_model_wide_sliding_window_is_compressed_not_skipped():
    """MistralConfig's default: one sliding_window, no layer_types. Compression used to be a
    silent no-op there (every layer became transformers' own sliding layer)."""
    model = _windowed_mistral(64)
    with kv.compress(model, "snapkv", keep=0.5) as s, torch.no_grad():
        model(random_ids(40, seed=1), use_cache=True)
    assert s.last_cache.entries() == 4 * 2 * 20          # layers x kv heads x half of 40
    with pytest.raises(UsageError, match="sliding window of 64 tokens"):
        with kv.compress(model, "snapkv", keep=0.5), torch.no_grad():
            model(random_ids(80, seed=1), use_cache=True)


@pytest.mark.parametrize("policy", ["tova", "information"])
def test_decoding_past_a_model_wide_window_matches_the_model(policy):
    """keep=1.0 through the window: identical to the model's own sliding-window generate."""
    model = _windowed_mistral(24)
    ids = random_ids(20, seed=6)
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                             min_new_tokens=16, do_sample=False)
        with kv.compress(model, policy, keep=1.0) as s:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                 min_new_tokens=16, do_sample=False)
    assert torch.equal(ref, out)
    for layer in s.last_cache.layers:
        assert max(len(k) for k in _positions(layer)) <= 23


def test_query_aware_answers_do_not_depend_on_question_order(lm, report_text):
    """Each question gets its own plan (the recent window grew across questions before)."""
    model, tok = lm.model, lm.tokenizer
    short = "Q3 revenue?"
    long = ("Taking into account everything the report says about the quarter, the sites, "
            "the staff and the suppliers, what exactly was the revenue in the third quarter?")
    kw = dict(keep=0.2, query_aware=True, max_new_tokens=8, policy="snapkv")
    a = kv.answer(model, tok, report_text, [long, short], **kw).answers
    b = kv.answer(model, tok, report_text, [short, long], **kw).answers
    assert a == b[::-1]
    alone = kv.answer(model, tok, report_text, [short], **kw).answers
    assert alone == [a[1]]


def test_information_mixed_with_attention_runs_and_stays_in_budget():
    model = tiny_model("llama")
    with kv.compress(model, "information:attention=0.5", keep=0.25) as s, torch.no_grad():
        model(random_ids(64, seed=8), use_cache=True)
    assert s.last_cache.entries() == 4 * 2 * 16
