"""Regression tests for what issue 17 found in kv: each failed before its fix."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from kv_models import random_ids, tiny_model

from tokensieve import kv
from tokensieve.kv import hooks
from tokensieve.scoring.surprisal import token_surprisal


def _kept(layer, row: int = 0) -> list[list[int]]:
    """Sorted stored token positions of each head of one batch row."""
    _, _, pos = layer.dense_view()
    valid = layer.slot_valid()
    return [sorted((pos[row, h][valid[row, h]] if valid is not None else pos[row, h]).tolist())
            for h in range(pos.shape[1])]


# ------------------------------------------------------------------ wrong-width shared mask


def test_answer_with_pyramidkv_and_a_decode_cap_on_the_embedded_model(lm, report_text):
    """The issue's reproduction: layer 0 keeps more than later layers, the question's
    multi-token forward evicts layer 0 down to max_size=100 (a later layer's count), and
    the later layer was handed the model's mask for layer 0's old width (115 vs 315)."""
    res = kv.answer(lm.model, lm.tokenizer, report_text[:1500], ["What was the Q3 revenue?"],
                    policy="pyramidkv", keep=0.5, max_size=100, whole_numbers=False,
                    max_new_tokens=12)
    assert res.answers[0].strip()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("policy", ["pyramidkv", "global"])
def test_multi_token_forward_with_a_cap_equal_to_a_later_layers_count(policy, attn):
    """A capped multi-token forward attends exactly as the same forward without the cap
    (eviction happens after each layer's own attention), on layers of different sizes."""
    model = tiny_model("llama", attn)
    ids, more = random_ids(120, seed=5), random_ids(10, seed=6)
    with kv.compress(model, policy, keep=0.5) as s, torch.no_grad():
        model(ids, use_cache=True)
    counts = [layer.stored_length() for layer in s.last_cache.layers]
    cap = min(counts)
    assert counts[0] > cap > 4       # layer 0 is evicted to a later layer's count, mid-forward
    with kv.compress(model, policy, keep=0.5, max_size=cap) as s, torch.no_grad():
        model(ids, use_cache=True)
        cache = s.last_cache
        free = copy.deepcopy(cache)
        free.plan = dataclasses.replace(cache.plan, max_size=None)
        capped = model(more, past_key_values=cache, use_cache=True).logits
        ref = model(more, past_key_values=free, use_cache=True).logits
    assert torch.allclose(capped, ref, atol=1e-5)
    assert all(layer.stored_length() <= cap for layer in cache.layers)


# ------------------------------------------------------------------ left padding


def _kept_from_first_real(model, policy, ids, mask) -> list[list[list[int]]]:
    """Per layer and head, the kept positions of the LAST row, counted from its first
    real token."""
    with kv.compress(model, policy, keep=0.5, recent=4) as s, torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
    pad = int((mask[-1] == 0).sum())
    return [[[p - pad for p in head] for head in _kept(layer, row=ids.shape[0] - 1)]
            for layer in s.last_cache.layers]


@pytest.mark.parametrize("policy", ["information", "chunkkv"])
def test_chunks_keep_the_same_tokens_alone_and_in_a_left_padded_batch(policy):
    """Fixed chunks are cut over the row's real tokens (they were cut over padded slots)."""
    model = tiny_model("llama")
    short, long = random_ids(75, seed=41), random_ids(100, seed=42)
    alone = _kept_from_first_real(model, policy, short, torch.ones_like(short))
    ids = torch.zeros(2, 100, dtype=torch.long)
    mask = torch.zeros(2, 100, dtype=torch.long)
    ids[0], mask[0] = long[0], 1
    ids[1, 25:], mask[1, 25:] = short[0], 1
    batched = _kept_from_first_real(model, policy, ids, mask)
    assert batched == alone


def test_surprisal_of_a_left_padded_row_is_read_from_real_tokens_only():
    """The first real token gets the row's highest surprisal, as alone, not a value
    predicted from a pad position; padding scores nothing."""
    model = tiny_model("llama")
    short = random_ids(30, seed=43)
    ids = torch.cat([torch.zeros(1, 10, dtype=torch.long), short], 1)
    valid = torch.arange(40)[None] >= 10
    with torch.no_grad():
        h_alone = model(short, output_hidden_states=True).hidden_states[-1]
        pos = (valid.cumsum(-1) - 1).clamp_min(0)
        h_pad = model(ids, attention_mask=valid.long(), position_ids=pos,
                      output_hidden_states=True).hidden_states[-1]
    alone = token_surprisal(model, h_alone, short)
    padded = token_surprisal(model, h_pad, ids, valid=valid)
    assert torch.allclose(padded[:, 10:], alone, atol=1e-4)
    assert float(padded[0, 10]) == pytest.approx(float(padded[0, 11:].max()))
    assert torch.all(padded[:, :10] == 0)


# ------------------------------------------------------------------ memory held by information


def _storages(obj, seen_ids=None, found=None) -> dict[int, int]:
    """data_ptr -> bytes of every tensor storage reachable from ``obj`` through plain
    containers, dataclasses and object attributes (modules, i.e. weights, are skipped)."""
    seen_ids = set() if seen_ids is None else seen_ids
    found = {} if found is None else found
    if id(obj) in seen_ids or isinstance(obj, torch.nn.Module):
        return found
    seen_ids.add(id(obj))
    if torch.is_tensor(obj):
        st = obj.untyped_storage()
        found[st.data_ptr()] = st.nbytes()
        return found
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple | set):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        return found
    for c in children:
        _storages(c, seen_ids, found)
    return found


@pytest.mark.parametrize("policy", ["information", "information:attention=0.5", "global"])
def test_what_the_prefill_holds_is_measured_and_small(policy):
    """Measured when the final norm has run (every layer still pending): the cache holds
    its full KV, the final hidden states and a few small per-layer tensors -- no longer a
    view of every layer's hidden states -- and ``peak_bytes`` counts all of it."""
    model = tiny_model("llama")
    t, held, caches = 256, {}, []

    def measure(module, args, output):   # runs after the session's own norm hook
        state = {k: v for k, v in vars(caches[-1]).items()
                 if k not in ("n_real", "row_start")}          # (B,) row counters aside
        held.update(bytes=sum(_storages(state).values()), kv=caches[-1].nbytes())

    with kv.compress(model, policy, keep=0.25) as s, torch.no_grad():
        h1 = model.model.register_forward_pre_hook(
            lambda m, a, kw: caches.append(kw["past_key_values"]), with_kwargs=True)
        h2 = model.model.norm.register_forward_hook(measure)
        try:
            model(random_ids(t, seed=7), use_cache=True)
        finally:
            h1.remove()
            h2.remove()
    full_kv = held["kv"]
    hidden = t * model.config.hidden_size * 4                 # the final hidden states
    extra = held["bytes"] - full_kv
    assert full_kv == 4 * 2 * 2 * t * 16 * 4                   # layers, heads, k+v, dims, fp32
    assert extra <= hidden + full_kv // 4                       # was 4 x hidden + tables
    assert s.last_cache.peak_bytes >= held["bytes"]


# ------------------------------------------------------------------ units stay whole


@pytest.mark.parametrize(("policy", "surprisal_scale"), [
    ("information", 1.0), ("information", 1e3), ("information:attention=0.5", 1.0)])
def test_a_unit_cut_by_the_budget_keeps_one_contiguous_end(monkeypatch, policy,
                                                           surprisal_scale):
    """Units of 12 tokens, a budget that is not a whole number of units: every unit is kept
    whole, dropped whole, or (one unit per head) keeps a contiguous run of its last tokens.
    Large surprisal values made the old ``+ arange * 1e-7`` tie-break vanish in float32;
    mixed with attention, the ranks of one unit's tokens differed (a tie-break by index)."""
    model = tiny_model("llama")
    real = hooks.token_surprisal
    monkeypatch.setattr(hooks, "token_surprisal",
                        lambda *a, **k: real(*a, **k) * surprisal_scale + 1000 * surprisal_scale)
    ids = random_ids(96, seed=4)
    units = [(i, i + 12) for i in range(0, 96, 12)]
    with kv.compress(model, policy, keep=0.4, units=units, sinks=0, recent=0) as s, \
            torch.no_grad():
        model(ids, use_cache=True)
    for layer in s.last_cache.layers:
        for kept in _kept(layer):
            assert len(kept) == 38
            partial = 0
            for a, b in units:
                inside = [p for p in kept if a <= p < b]
                if 0 < len(inside) < b - a:
                    partial += 1
                    assert inside == list(range(b - len(inside), b)), inside
            assert partial <= 1


def test_chunkkv_keeps_chunks_whole_but_one():
    model = tiny_model("llama")
    with kv.compress(model, "chunkkv:chunk=12", keep=0.4, sinks=0, recent=0) as s, \
            torch.no_grad():
        model(random_ids(96, seed=4), use_cache=True)
    for layer in s.last_cache.layers:
        for kept in _kept(layer):
            assert len(kept) == 38
            cut = [[p for p in kept if a <= p < a + 12] for a in range(0, 96, 12)]
            cut = [c for c in cut if 0 < len(c) < 12]
            assert len(cut) <= 1 and all(c == list(range(c[0], c[0] + len(c))) for c in cut)


def test_decode_eviction_under_information_keeps_units():
    """max_size eviction during generation follows the prefill's units: a unit is kept
    whole or keeps its end (one cut unit per head at most), the newest token stays."""
    model = tiny_model("llama")
    ids = random_ids(96, seed=4)
    units = [(i, i + 12) for i in range(0, 96, 12)]
    with kv.compress(model, "information", keep=0.5, units=units, sinks=0, recent=0,
                     max_size=40) as s, torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                       min_new_tokens=6, do_sample=False)
    seen = s.last_cache.get_seq_length()
    for layer in s.last_cache.layers:
        for kept in _kept(layer):
            assert len(kept) == 40 and seen - 1 in kept
            partial = 0
            for a, b in units:
                inside = [p for p in kept if a <= p < b]
                if 0 < len(inside) < b - a:
                    partial += 1
                    assert inside == list(range(b - len(inside), b)), inside
            assert partial <= 1


# ------------------------------------------------------------------ transactional setup


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_a_failed_setup_leaves_no_hooks_on_the_model(monkeypatch):
    model = tiny_model("llama")
    before = _hook_count(model)
    ids = random_ids(20, seed=1)
    with torch.no_grad():
        ref = model(ids).logits

    def broken():
        raise RuntimeError("decoder lookup failed")

    monkeypatch.setattr(model, "get_decoder", broken)
    with pytest.raises(RuntimeError, match="decoder lookup failed"):
        with kv.compress(model, "tova", keep=0.5):
            pass
    monkeypatch.undo()
    assert _hook_count(model) == before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    with kv.compress(model, "tova", keep=0.5) as s, torch.no_grad():   # usable again
        model(ids, use_cache=True)
    assert s.last_cache.entries() == 4 * 2 * 10


# ------------------------------------------------------------------ surprisal chunks


def test_surprisal_logits_are_computed_in_chunks_of_bounded_elements(monkeypatch):
    """batch x positions x vocab per call to the output head stays under the bound (it
    was 256 positions x the whole batch), and the values are the model's own log-probs."""
    model = tiny_model("llama")
    vocab = model.config.vocab_size
    from tokensieve.scoring import surprisal

    monkeypatch.setattr(surprisal, "SURPRISAL_CHUNK_ELEMENTS", 4 * vocab)
    ids = random_ids(40, batch=8, seed=9)
    sizes = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, a, out: sizes.append(out.numel()))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        sizes.clear()
        got = token_surprisal(model, out.hidden_states[-1], ids)
    handle.remove()
    logp = torch.log_softmax(out.logits.float(), -1)
    ref = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    assert sizes and max(sizes) <= 4 * vocab
    assert sum(sizes) == 8 * 39 * vocab                  # every prediction once, nothing more
    assert torch.allclose(got[:, 1:], ref, atol=1e-4)
    assert torch.equal(got[:, 0], got[:, 1:].max(-1).values)


def test_information_rank_mix_ignores_float_noise_below_the_quantisation_step():
    """The rank mix of surprisal and attention ranks quantised scores (same input, same
    output): two units whose attention differs only by one float32 ulp share one rank, so
    swapping that noise between them changes nothing."""
    from types import SimpleNamespace

    from tokensieve.kv.policies.information import Information, _rank01

    a = torch.tensor(0.25)
    noisy = torch.nextafter(a, torch.tensor(1.0))       # 0.25 + 1 ulp, well below 2**-16
    assert noisy != a
    ranks = _rank01(torch.stack([a, noisy, torch.tensor(1.0)])[None])
    assert ranks.tolist() == [[0.0, 0.0, 1.0]]           # was [0, 0.5, 1]

    def score(attention: list[torch.Tensor]) -> torch.Tensor:
        x = SimpleNamespace(
            keys=torch.zeros(1, 1, 3, 4),
            shared={"surprisal": torch.tensor([[1.0, 2.0, 3.0]]),
                    "units": torch.tensor([[0, 1, 2]])},
            window_attention=lambda w, reduce: torch.stack(attention)[None, None],
        )
        return Information(attention=0.5).score(x)[0, 0]

    one = score([a, noisy, torch.tensor(0.1)])
    other = score([noisy, a, torch.tensor(0.1)])
    assert torch.equal(one, other)
    # half the surprisal ranks (0, 0.5, 1) plus half the attention ranks (0.5, 0.5, 0)
    assert one.tolist() == [0.25, 0.5, 0.5]
