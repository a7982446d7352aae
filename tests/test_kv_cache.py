"""The compressed KV cache: exactness at keep 1, real memory savings, positions after
eviction against a reference, sdpa == eager, batches of different lengths, every policy on
every architecture."""

from __future__ import annotations

import pytest
import torch
from kv_models import CONFIGS, random_ids, tiny_model

from tokensieve import kv
from tokensieve.kv.cache import CompressedLayer

POLICIES = sorted(kv.POLICIES)


def gen(model, ids, n=8, mask=None, **kw):
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, **kw)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_keep_all_is_bit_identical(arch):
    model = tiny_model(arch)
    ids = random_ids(50)
    ref = gen(model, ids)
    with kv.compress(model, "snapkv", keep=1.0) as s:
        out = gen(model, ids)
    assert isinstance(s.last_cache, kv.CompressedCache)
    assert torch.equal(ref.sequences, out.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ref.scores, out.scores, strict=True))
    with torch.no_grad():
        plain = model(ids).logits
        with kv.compress(model, keep=1.0):
            inside = model(ids).logits
    assert torch.equal(plain, inside)


@pytest.mark.parametrize("keep", [0.75, 0.5, 0.25, 0.1])
def test_stored_bytes_match_the_budget(keep):
    model = tiny_model("llama")
    t = 200
    with torch.no_grad(), kv.compress(model, "snapkv", keep=keep) as s:
        model(random_ids(t))
    cache = s.last_cache
    kept = round(t * keep)
    cfg = model.config
    per_entry = 2 * (cfg.hidden_size // cfg.num_attention_heads) * 4  # key + value, float32
    expected = cfg.num_hidden_layers * cfg.num_key_value_heads * kept * per_entry
    assert cache.nbytes() == expected
    assert all(layer.keys.shape[-2] == kept for layer in cache.layers)
    assert cache.get_seq_length() == t


def test_head_adaptive_frees_memory_per_head():
    model = tiny_model("llama")
    t, keep = 200, 0.25
    with torch.no_grad(), kv.compress(model, "adakv", keep=keep) as s:
        model(random_ids(t, seed=3))
    cache = s.last_cache
    kept = round(t * keep)
    ragged = [layer for layer in cache.layers if layer.heads is not None]
    assert ragged, "AdaKV should give heads different numbers of entries"
    for layer in cache.layers:
        assert layer.entries() == model.config.num_key_value_heads * kept
    full = t * model.config.num_hidden_layers * model.config.num_key_value_heads * 2 * 16 * 4
    assert cache.nbytes() == pytest.approx(full * keep, rel=0.01)


def _reference_logits(model, seq, allowed):
    """One teacher-forced forward with an explicit 4D mask (True = may attend)."""
    bias = torch.zeros(allowed.shape, dtype=torch.float32)
    bias = bias.masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        return model(seq, attention_mask=bias).logits[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_streaming_positions_match_a_reference(arch, attn):
    """StreamingLLM keeps 4 sinks + the newest tokens, at prefill and (max_size) while
    generating; the same text must come out of a full forward whose mask hides exactly the
    evicted entries -- which holds only if positions stay right after eviction."""
    model = tiny_model(arch, attn)
    t, sinks, max_size, new = 40, 4, 16, 12
    ids = random_ids(t, seed=1)
    with kv.compress(model, "streaming_llm", keep=max_size / t, sinks=sinks, recent=0,
                     max_size=max_size) as s:
        out = gen(model, ids, n=new)
    seq = out.sequences
    assert s.last_cache.get_seq_length() == t + new - 1
    assert all(layer.keys.shape[-2] <= max_size for layer in s.last_cache.layers)
    n = seq.shape[1]
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    allowed = (k <= q) & ((q < t) | (k < sinks) | (k >= q - (max_size - sinks)))
    ref = _reference_logits(model, seq, allowed)
    generated = ref[t - 1: n - 1].argmax(-1)
    assert torch.equal(generated, seq[0, t:])
    for i, step in enumerate(out.scores):
        assert torch.allclose(step[0], ref[t - 1 + i], atol=1e-4)


def test_several_generate_calls_continue_from_the_compressed_cache():
    model = tiny_model("qwen2")
    ids = random_ids(60, seed=2)
    with kv.compress(model, "tova", keep=0.5) as s:
        first = gen(model, ids, n=5)
        cache = s.last_cache
        stored = cache.layers[0].keys.shape[-2]
        more = torch.cat([first.sequences, random_ids(3, seed=9)], dim=1)
        second = gen(model, more, n=5, past_key_values=cache)
    n = second.sequences.shape[1]
    assert n > more.shape[1]
    assert cache.get_seq_length() == n - 1                         # seen, not stored
    assert cache.layers[0].keys.shape[-2] == stored + (n - 1 - first.sequences.shape[1] + 1)
    assert torch.equal(second.sequences[:, : more.shape[1]], more)


@pytest.mark.parametrize("policy", ["pyramidkv", "adakv", "global", "snapkv"])
def test_sdpa_and_eager_agree(policy):
    """Per-layer (PyramidKV, global pool) and per-head (AdaKV) budgets need a mask per layer;
    kvpress's PyramidKV fails here without flash-attention, ours must match sdpa exactly."""
    ids = random_ids(80, seed=4)
    outs = {}
    for attn in ("sdpa", "eager"):
        model = tiny_model("llama", attn)
        with kv.compress(model, policy, keep=0.4) as s:
            outs[attn] = gen(model, ids, n=6)
        if policy == "pyramidkv":
            lengths = {layer.keys.shape[-2] for layer in s.last_cache.layers}
            assert len(lengths) > 1
    assert torch.equal(outs["sdpa"].sequences, outs["eager"].sequences)
    for a, b in zip(outs["sdpa"].scores, outs["eager"].scores, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    tiny_model("llama", "sdpa")


@pytest.mark.parametrize("policy", ["snapkv", "pyramidkv", "adakv", "streaming_llm"])
def test_batch_of_different_lengths_matches_single_rows(policy):
    model = tiny_model("llama")
    long, short = random_ids(70, seed=5), random_ids(40, seed=6)
    batch = torch.zeros(2, 70, dtype=torch.long)
    mask = torch.zeros(2, 70, dtype=torch.long)
    batch[0], mask[0] = long[0], 1
    batch[1, 30:], mask[1, 30:] = short[0], 1                       # left padding
    with kv.compress(model, policy, keep=0.5) as s:
        both = gen(model, batch, mask=mask)
    layer = s.last_cache.layers[0]
    assert layer.slot_valid() is not None                          # the short row has filler
    for row, ids in ((0, long), (1, short)):
        with kv.compress(model, policy, keep=0.5):
            alone = gen(model, ids)
        assert torch.equal(both.sequences[row, -8:], alone.sequences[0, -8:])
        for a, b in zip(both.scores, alone.scores, strict=False):
            assert torch.allclose(a[row], b[0], atol=1e-4)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_on_every_architecture(arch, policy):
    model = tiny_model(arch)
    t, keep = 64, 0.25
    ids = random_ids(t, seed=7)
    with kv.compress(model, policy, keep=keep, recent=8) as s:
        out = gen(model, ids, n=4, min_new_tokens=4)  # a random model may pick EOS
    cache = s.last_cache
    assert out.sequences.shape == (1, t + 4)
    assert cache.get_seq_length() == t + 3
    compressed = [layer for layer in cache.layers if isinstance(layer, CompressedLayer)]
    assert compressed
    kept = sum(layer.entries() for layer in compressed)
    heads = model.config.num_key_value_heads
    budget = len(compressed) * heads * (round(t * keep) + 3)
    assert kept == pytest.approx(budget, rel=0.02)
    for layer in compressed:  # sinks and the recent window survive (if the layer has room)
        _, _, pos = layer.dense_view()
        valid = layer.slot_valid()
        for h in range(heads):
            p = set((pos[0, h][valid[0, h]] if valid is not None else pos[0, h]).tolist())
            assert set(range(4)) <= p
            if len(p) - 3 >= 4 + 8:
                assert set(range(t - 8, t + 3)) <= p


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
def test_window_attention_equals_the_models_own_attention(arch):
    """Policies see the observation window's attention, recomputed from the window queries
    (the model runs with sdpa); it must equal the rows eager attention reports."""
    from tokensieve.kv.policies.base import Policy

    seen = {}

    class Capture(Policy):
        name = "capture"

        def score(self, x):
            seen[x.layer_idx] = x.window_attention(8)
            return x.keys.float().norm(dim=-1)

    ids = random_ids(40, seed=12)
    model = tiny_model(arch, "eager")
    with torch.no_grad():
        ref = model(ids, output_attentions=True).attentions
    model = tiny_model(arch, "sdpa")
    with kv.compress(model, Capture(), keep=0.5), torch.no_grad():
        model(ids)
    assert seen
    g = model.config.num_attention_heads // model.config.num_key_value_heads
    for layer, probs in seen.items():
        full = ref[layer][:, :, -8:, :]                                 # (1, Hq, 8, T)
        full = full.view(1, -1, g, 8, full.shape[-1]).mean(2)
        assert torch.allclose(probs, full, atol=1e-5)


def test_peak_kv_during_prefill_is_one_full_layer_over_the_budget():
    """Layers are evicted right after their own prefill, so the cache never holds more than
    the compressed layers plus one full layer; the global pool must wait for every layer."""
    model = tiny_model("llama")
    t, keep, layers = 200, 0.25, model.config.num_hidden_layers
    full_layer = t * model.config.num_key_value_heads * 2 * 16 * 4
    with kv.compress(model, "tova", keep=keep) as s, torch.no_grad():
        model(random_ids(t))
    assert s.last_cache.peak_bytes == full_layer * ((layers - 1) * keep + 1)
    with kv.compress(model, "global", keep=keep) as s, torch.no_grad():
        model(random_ids(t))
    assert s.last_cache.peak_bytes == full_layer * layers


def _old_window_attention(x, w):
    """The computation window_attention did before it went per KV head (reference copy):
    keys repeated to every query head in float32, all w queries at once."""
    from tokensieve.kv.attention import project_queries

    t = x.keys.shape[2]
    w = max(1, min(w or x.window, t, x.hidden.shape[1]))
    q = project_queries(x.module, x.hidden[:, -w:], x.cos[:, -w:], x.sin[:, -w:])
    b, hq, _, d = q.shape
    k = x.keys.repeat_interleave(x.groups, dim=1) if x.groups > 1 else x.keys
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * x.module.scaling
    qpos = torch.arange(t - w, t, device=q.device)[:, None]
    allowed = (torch.arange(t, device=q.device)[None, :] <= qpos)[None, None]
    valid = x.valid if x.valid.dim() == 3 else x.valid[:, None, :]
    if valid.shape[1] > 1 and x.groups > 1:
        valid = valid.repeat_interleave(x.groups, dim=1)
    allowed = allowed & valid[:, :, None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    return probs.view(b, hq // x.groups, x.groups, w, t).mean(2)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
def test_window_attention_per_head_equals_the_old_computation(arch, monkeypatch):
    """Per KV head, in chunks of queries, in the keys' dtype: the same probabilities as the
    old all-heads-at-once float32 computation, for 1, 7 and 64 window queries, with a
    left-padded row (its padding queries attend to nothing), per-head validity, and the
    reduced forms the policies pool with."""
    from tokensieve.kv.attention import LayerInputs
    from tokensieve.kv.policies.base import Policy

    captured = []

    class Capture(Policy):
        name = "capture"

        def score(self, x):
            captured.append(x)
            return x.keys.float().norm(dim=-1)

    model = tiny_model(arch)
    t = 80
    batch = torch.zeros(2, t, dtype=torch.long)
    mask = torch.zeros(2, t, dtype=torch.long)
    batch[0], mask[0] = random_ids(t, seed=21)[0], 1
    batch[1, 50:], mask[1, 50:] = random_ids(30, seed=22)[0], 1       # 50 padding tokens
    with kv.compress(model, Capture(), keep=0.5), torch.no_grad():
        model(batch, attention_mask=mask)
    assert captured
    g = torch.Generator().manual_seed(0)
    for x in captured:
        h = x.keys.shape[1]
        per_head = x.valid[:, None, :] & (torch.rand(2, h, t, generator=g) > 0.3)
        for valid in (x.valid, per_head):
            for w in (1, 7, 64):
                for chunk in (1 << 24, 2 * 2 * 2 * t):   # one chunk, or 2 queries per chunk
                    monkeypatch.setattr(LayerInputs, "chunk_elements", chunk)
                    y = LayerInputs(**{**x.__dict__, "valid": valid, "_attn": {}})
                    ref = _old_window_attention(y, w)
                    got = y.window_attention(w)
                    assert got.shape == ref.shape == (2, h, w, t)
                    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
                    assert torch.allclose(y.window_attention(w, reduce="mean"), ref.mean(2),
                                          atol=1e-6)
                    fresh = LayerInputs(**{**x.__dict__, "valid": valid, "_attn": {}})
                    assert torch.allclose(fresh.window_attention(w, reduce="sum"), ref.sum(2),
                                          atol=1e-5)
                    assert torch.allclose(fresh.window_attention(w, reduce="mean"),
                                          ref.mean(2), atol=1e-6)
    # the padded row's padding queries (window of 64 reaches into them) attend to nothing
    x = LayerInputs(**{**captured[-1].__dict__, "_attn": {}})
    probs = x.window_attention(64)
    assert torch.all(probs[1, :, : 64 - 30] == 0)
    assert torch.allclose(probs[1, :, 64 - 30:].sum(-1), torch.ones(1), atol=1e-5)
    assert torch.all(probs[1, ..., :50] == 0)                           # padding keys


def test_per_head_blocks_grow_in_place_while_decoding():
    """AdaKV's per-head blocks: a decode step writes its entry into room the block already
    has (no copy of the block, no re-stacking kept between steps); a full block grows by a
    chunk. nbytes() counts the room really held, entries() the real entries."""
    from tokensieve.kv.cache import GROW_SLOTS

    model = tiny_model("llama")
    t, keep, new = 200, 0.25, 20
    ids = random_ids(t, seed=3)
    pointers: list[dict] = []

    def record(module, args, kwargs, output):
        cache = kwargs.get("past_key_values")
        if isinstance(cache, kv.CompressedCache):
            pointers.append({i: [blk["k"].data_ptr() for blk in layer.heads]
                             for i, layer in enumerate(cache.layers) if layer.heads})

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        with kv.compress(model, "adakv", keep=keep) as s, torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False)
    finally:
        handle.remove()
    heads, d = model.config.num_key_value_heads, 16
    ragged = [i for i, layer in enumerate(s.last_cache.layers) if layer.heads is not None]
    assert ragged and len(pointers) == new
    # prefill: exact blocks; the first decode step grows each block once, by a chunk, and
    # every later step writes into that same buffer
    assert all(p == pointers[1] for p in pointers[1:]) and pointers[0] != pointers[1]
    for i in ragged:
        layer = s.last_cache.layers[i]
        lengths = [blk["pos"].shape[1] for blk in layer.heads]
        assert len(set(lengths)) > 1 and sum(lengths) == heads * round(t * keep)
        for blk, n in zip(layer.heads, lengths, strict=True):
            assert blk["k"].shape[1] == n + 1 + max(GROW_SLOTS, (n + 1) // 16)
        assert layer.stored_length() == max(lengths) + new - 1
        assert layer.entries() == heads * (round(t * keep) + new - 1)
        assert layer.nbytes() == sum(2 * blk["k"].shape[1] * d * 4 for blk in layer.heads)
        # the padded view a forward pass sees: every head right-aligned, zeros in front
        keys, values, pos = layer.dense_view()
        valid = layer.slot_valid()
        for j, (blk, n) in enumerate(zip(layer.heads, lengths, strict=True)):
            live = n + new - 1
            assert torch.equal(keys[0, j, -live:], blk["k"][0, :live])
            assert torch.equal(values[0, j, -live:], blk["v"][0, :live])
            assert (keys[0, j, :-live] == 0).all() and (values[0, j, :-live] == 0).all()
            assert not valid[0, j, :-live].any() and valid[0, j, -live:].all()
            assert torch.equal(pos[0, j, -live:-(new - 1)], blk["pos"][0])
            assert pos[0, j, -(new - 1):].tolist() == list(range(t, t + new - 1))


@pytest.mark.parametrize("policy", ["snapkv", "adakv"])
def test_batch_operations_move_every_row_together(policy):
    """Beam reordering / repeating / selecting rows moves the stored entries, their
    validity and positions, and the per-row bookkeeping (real tokens, padding) that
    decode-time eviction uses, all together."""
    model = tiny_model("llama")
    batch = torch.zeros(2, 70, dtype=torch.long)
    mask = torch.zeros(2, 70, dtype=torch.long)
    batch[0], mask[0] = random_ids(70, seed=5)[0], 1
    batch[1, 30:], mask[1, 30:] = random_ids(40, seed=6)[0], 1
    with kv.compress(model, policy, keep=0.5) as s, torch.no_grad():
        model(batch, attention_mask=mask)
    cache = s.last_cache
    layer = cache.layers[1]

    def state():
        keys, values, pos = layer.dense_view()
        return keys, values, pos, layer.slot_valid(), cache.n_real, cache.row_start

    before = state()
    assert before[4].tolist() == [70, 40] and before[5].tolist() == [0, 30]
    cache.reorder_cache(torch.tensor([1, 0]))
    for a, b in zip(state(), before, strict=True):
        assert torch.equal(a, b.flip(0))
    cache.batch_repeat_interleave(2)
    for a, b in zip(state(), before, strict=True):
        assert torch.equal(a, b.flip(0).repeat_interleave(2, dim=0))
    cache.batch_select_indices(torch.tensor([2]))
    for a, b in zip(state(), before, strict=True):
        assert torch.equal(a, b[:1])
    assert layer.entries() == model.config.num_key_value_heads * 35   # row 0: half of 70
