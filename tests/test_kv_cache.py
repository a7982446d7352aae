"""The compressed KV cache: exactness at ratio 0, real memory savings, positions after
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
def test_ratio_zero_is_bit_identical(arch):
    model = tiny_model(arch)
    ids = random_ids(50)
    ref = gen(model, ids)
    with kv.compress(model, "snapkv", ratio=0.0) as s:
        out = gen(model, ids)
    assert isinstance(s.last_cache, kv.CompressedCache)
    assert torch.equal(ref.sequences, out.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ref.scores, out.scores, strict=True))
    with torch.no_grad():
        plain = model(ids).logits
        with kv.compress(model, ratio=0.0):
            inside = model(ids).logits
    assert torch.equal(plain, inside)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_stored_bytes_match_the_budget(ratio):
    model = tiny_model("llama")
    t = 200
    with torch.no_grad(), kv.compress(model, "snapkv", ratio=ratio) as s:
        model(random_ids(t))
    cache = s.last_cache
    keep = round(t * (1 - ratio))
    cfg = model.config
    per_entry = 2 * (cfg.hidden_size // cfg.num_attention_heads) * 4  # key + value, float32
    expected = cfg.num_hidden_layers * cfg.num_key_value_heads * keep * per_entry
    assert cache.nbytes() == expected
    assert all(layer.keys.shape[-2] == keep for layer in cache.layers)
    assert cache.get_seq_length() == t


def test_head_adaptive_frees_memory_per_head():
    model = tiny_model("llama")
    t, ratio = 200, 0.75
    with torch.no_grad(), kv.compress(model, "adakv", ratio=ratio) as s:
        model(random_ids(t, seed=3))
    cache = s.last_cache
    keep = round(t * (1 - ratio))
    ragged = [layer for layer in cache.layers if layer.heads is not None]
    assert ragged, "AdaKV should give heads different numbers of entries"
    for layer in cache.layers:
        assert layer.entries() == model.config.num_key_value_heads * keep
    full = t * model.config.num_hidden_layers * model.config.num_key_value_heads * 2 * 16 * 4
    assert cache.nbytes() == pytest.approx(full * (1 - ratio), rel=0.01)


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
    with kv.compress(model, "streaming_llm", ratio=1 - max_size / t, sinks=sinks, recent=0,
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
    with kv.compress(model, "tova", ratio=0.5) as s:
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
        with kv.compress(model, policy, ratio=0.6) as s:
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
    with kv.compress(model, policy, ratio=0.5) as s:
        both = gen(model, batch, mask=mask)
    layer = s.last_cache.layers[0]
    assert layer.slot_valid() is not None                          # the short row has filler
    for row, ids in ((0, long), (1, short)):
        with kv.compress(model, policy, ratio=0.5):
            alone = gen(model, ids)
        assert torch.equal(both.sequences[row, -8:], alone.sequences[0, -8:])
        for a, b in zip(both.scores, alone.scores, strict=False):
            assert torch.allclose(a[row], b[0], atol=1e-4)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_on_every_architecture(arch, policy):
    model = tiny_model(arch)
    t, ratio = 64, 0.75
    ids = random_ids(t, seed=7)
    with kv.compress(model, policy, ratio=ratio, recent=8) as s:
        out = gen(model, ids, n=4)
    cache = s.last_cache
    assert out.sequences.shape == (1, t + 4)
    assert cache.get_seq_length() == t + 3
    compressed = [layer for layer in cache.layers if isinstance(layer, CompressedLayer)]
    assert compressed
    kept = sum(layer.entries() for layer in compressed)
    heads = model.config.num_key_value_heads
    budget = len(compressed) * heads * (round(t * (1 - ratio)) + 3)
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
    with kv.compress(model, Capture(), ratio=0.5), torch.no_grad():
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
    t, ratio, layers = 200, 0.75, model.config.num_hidden_layers
    full_layer = t * model.config.num_key_value_heads * 2 * 16 * 4
    with kv.compress(model, "tova", ratio=ratio) as s, torch.no_grad():
        model(random_ids(t))
    assert s.last_cache.peak_bytes == full_layer * ((layers - 1) * (1 - ratio) + 1)
    with kv.compress(model, "global", ratio=ratio) as s, torch.no_grad():
        model(random_ids(t))
    assert s.last_cache.peak_bytes == full_layer * layers
