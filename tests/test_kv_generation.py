"""Generation modes with a compressed cache: Qwen3, beam search, sampling, several return
sequences, left-padded batches.

Each mode is checked three ways: with nothing removed (keep=1.0) the output is identical to
``generate`` without ``kv.compress``; with compression every row (beam, returned sequence)
holds exactly its budget plus the generated tokens; and the tokens are those of an
*uncompressed* eager ``generate`` whose attention masks hide exactly the entries the
compressed cache evicted (per layer and per KV head), i.e. eviction changes what is
attended to and nothing else (positions, beam reordering, padding, sampling all agree).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from kv_models import random_ids, tiny_model

from tokensieve import kv
from tokensieve.engine import keep_count
from tokensieve.kv.attention import attention_modules
from tokensieve.kv.cache import CompressedLayer

T, NEW, KEEP = 60, 8, 0.25


def budget(n: int, keep: float = KEEP) -> int:
    return keep_count(keep, n)  # the engine's one rounding rule


def padded_batch():
    """Two rows, the second left-padded: 60 and 36 real tokens."""
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    ids[0], mask[0] = random_ids(T, seed=31)[0], 1
    ids[1, 24:], mask[1, 24:] = random_ids(T - 24, seed=32)[0], 1
    return ids, mask


MODES = {
    "beam3": dict(num_beams=3, do_sample=False),
    "beam3_two_returned": dict(num_beams=3, num_return_sequences=2, do_sample=False),
    "sample_two_returned": dict(do_sample=True, num_return_sequences=2, top_k=0),
    "greedy": dict(do_sample=False),
}


def generate(model, ids, mask, seed=0, **mode):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                              output_scores=True, return_dict_in_generate=True, **mode)


def kept_context(cache: kv.CompressedCache, t: int) -> dict[int, torch.Tensor]:
    """(rows, kv_heads, t) which context positions each compressed layer still holds."""
    out = {}
    for i, layer in enumerate(cache.layers):
        if not isinstance(layer, CompressedLayer):
            continue
        _, _, pos = layer.dense_view()
        valid = layer.slot_valid()
        valid = torch.ones_like(pos, dtype=torch.bool) if valid is None else valid
        held = torch.zeros(*pos.shape[:2], t + 1, dtype=torch.bool)
        held.scatter_(-1, torch.where(valid & (pos < t), pos, t), True)
        out[i] = held[..., :t]
    return out


@contextmanager
def masked_reference(model, visible):
    """While generating with an ordinary (uncompressed) cache, every decode step of layer i
    may attend only where ``visible(i, past, q)`` (rows, 1|Hq, q, past + q) is true (and
    where the model's own mask allows); the prefill is left as the model computes it (the
    compressed cache is filled from the full prefill too)."""

    def pre(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        b, q = hidden.shape[:2]
        past = kwargs["past_key_values"].get_seq_length(module.layer_idx)
        extra = visible(module.layer_idx, past, q) if past else None
        if extra is None:
            return None
        original = kwargs.get("attention_mask")
        if original is None:
            allowed = torch.ones(b, 1, q, past + q, dtype=torch.bool).tril(past)
        else:
            allowed = original if original.dtype == torch.bool else original == 0
        allowed = allowed & extra
        kwargs["attention_mask"] = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        return args, kwargs

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True)
               for m in attention_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hide_evicted(model, kept: dict[int, torch.Tensor], t: int):
    """Decode steps of layer i see the context positions ``kept[i]`` (rows, kv_heads, t) and
    every generated token."""
    groups = model.config.num_attention_heads // model.config.num_key_value_heads

    def visible(layer, past, q):
        if layer not in kept:
            return None
        heads = kept[layer].repeat_interleave(groups, dim=1)             # (B, Hq, t)
        return torch.cat([heads, heads.new_ones(*heads.shape[:2], past + q - t)], -1)[:, :, None]

    return masked_reference(model, visible)


def row_entries(layer: CompressedLayer) -> torch.Tensor:
    """(rows, kv_heads) real entries each row holds per head."""
    valid = layer.slot_valid()
    if valid is None:
        b, h, s, _ = layer.keys.shape
        return torch.full((b, h), s)
    return valid.sum(-1)


def check_against_masked_reference(arch, policy, mode, ids, mask, seed=0):
    """Compressed (sdpa) == uncompressed eager generate with the evicted entries masked."""
    model = tiny_model(arch, "sdpa")
    with kv.compress(model, policy, keep=KEEP, recent=8) as s:
        out = generate(model, ids, mask, seed, **mode)
    cache = s.last_cache
    # the cache holds one row per beam (beam search) or per returned sequence (sampling)
    per_input = mode.get("num_beams", 1) if mode.get("num_beams", 1) > 1 \
        else mode.get("num_return_sequences", 1)
    rows = ids.shape[0] * per_input
    assert out.sequences.shape[0] == ids.shape[0] * mode.get("num_return_sequences", 1)
    n_real = mask.sum(-1).repeat_interleave(per_input)
    assert cache.get_seq_length() == T + NEW - 1
    # every row holds its own budget plus the generated tokens (per layer; PyramidKV splits
    # the same pool unevenly over layers; AdaKV over the heads of a layer)
    want = torch.tensor([budget(int(n)) + NEW - 1 for n in n_real])
    held = torch.stack([row_entries(layer) for layer in cache.layers
                        if isinstance(layer, CompressedLayer)])      # (layers, rows, heads)
    layers, _, heads = held.shape
    assert held.shape[1] == rows
    if policy == "pyramidkv":
        assert torch.equal(held.sum((0, 2)), want * layers * heads)
        assert len(set(held[:, 0, 0].tolist())) > 1
    else:
        assert torch.equal(held.sum(2), want.expand(layers, rows) * heads)
    if policy != "adakv":
        assert bool((held == held[..., :1]).all())
    assert bool((held >= NEW).all())       # the generated tokens and at least one more
    kept = kept_context(cache, T)
    # rows that came from the same input (beams, returned sequences) evicted the same entries
    for held in kept.values():
        grouped = held.view(ids.shape[0], per_input, *held.shape[1:])
        assert bool((grouped == grouped[:, :1]).all())
    reference_model = tiny_model(arch, "eager")
    try:
        with hide_evicted(reference_model, kept, T):
            ref = generate(reference_model, ids, mask, seed, **mode)
    finally:
        tiny_model(arch, "sdpa")
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    if "sequences_scores" in out:
        assert torch.allclose(out.sequences_scores, ref.sequences_scores, atol=1e-4)
    return out, ref


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_keep_all_is_identical_to_plain_generate(arch, mode):
    model = tiny_model(arch)
    ids, mask = padded_batch()
    plain = generate(model, ids, mask, **MODES[mode])
    with kv.compress(model, "snapkv", keep=1.0) as s:
        inside = generate(model, ids, mask, **MODES[mode])
    assert isinstance(s.last_cache, kv.CompressedCache)
    assert torch.equal(plain.sequences, inside.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, inside.scores, strict=True))
    if "sequences_scores" in plain:
        assert torch.equal(plain.sequences_scores, inside.sequences_scores)


@pytest.mark.parametrize("policy", ["snapkv", "adakv", "pyramidkv", "tova"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_compressed_generation_equals_masked_reference(mode, policy):
    ids, mask = padded_batch()
    check_against_masked_reference("llama", policy, MODES[mode], ids, mask)


@pytest.mark.parametrize("policy", ["snapkv", "adakv", "h2o", "knorm", "streaming_llm"])
def test_qwen3(policy):
    """Qwen3 (query/key norms, explicit head_dim): one row and a left-padded batch."""
    ids, mask = padded_batch()
    check_against_masked_reference("qwen3", policy, MODES["greedy"], ids[:1], mask[:1])
    check_against_masked_reference("qwen3", policy, MODES["beam3"], ids, mask)


@pytest.mark.parametrize("policy", ["snapkv", "adakv"])
def test_gemma3_sliding_layers_untouched(policy):
    """Gemma 3: only the global layers are compressed; the sliding ones keep their window."""
    ids, mask = padded_batch()
    check_against_masked_reference("gemma3", policy, MODES["sample_two_returned"], ids, mask)


def test_sampling_is_seeded():
    """Same seed, same samples; another seed, other samples (the compressed cache adds no
    randomness of its own and does not consume the generator)."""
    model = tiny_model("llama")
    ids, mask = padded_batch()
    with kv.compress(model, "adakv", keep=KEEP):
        a = generate(model, ids, mask, 1, **MODES["sample_two_returned"]).sequences
        b = generate(model, ids, mask, 1, **MODES["sample_two_returned"]).sequences
        c = generate(model, ids, mask, 2, **MODES["sample_two_returned"]).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, T + NEW)


@pytest.mark.parametrize("mode", ["beam3_two_returned", "sample_two_returned", "greedy"])
def test_decode_eviction_matches_a_sliding_reference(mode):
    """max_size with StreamingLLM (positions only, so every beam keeps the same entries): each
    row keeps its first 4 real tokens and its newest ones, the short left-padded row growing
    into the cap; beams are reordered and sequences returned through the same cache."""
    sinks, max_size = 4, 16
    ids, mask = padded_batch()
    keep = max_size / T
    kw = MODES[mode]
    model = tiny_model("llama", "sdpa")
    with kv.compress(model, "streaming_llm", keep=keep, sinks=sinks, recent=0,
                     max_size=max_size) as s:
        out = generate(model, ids, mask, **kw)
    per_input = kw.get("num_beams", 1) if kw.get("num_beams", 1) > 1 \
        else kw.get("num_return_sequences", 1)
    start = (T - mask.sum(-1)).repeat_interleave(per_input)               # padding per row
    first = torch.tensor([budget(int(n), keep) for n in mask.sum(-1)]).repeat_interleave(
        per_input) - sinks                                                # newest kept at prefill
    for layer in s.last_cache.layers:
        assert bool((row_entries(layer) == max_size).all())               # both rows at the cap
        assert layer.stored_length() == max_size

    def visible(layer, past, q):
        assert q == 1
        k = torch.arange(past + 1)[None, :]
        recent = torch.clamp(first + past - T, max=max_size - sinks)[:, None]
        ok = ((k >= start[:, None]) & (k < start[:, None] + sinks)) | (k >= past - recent)
        return ok[:, None, None, :]

    reference_model = tiny_model("llama", "eager")
    try:
        with masked_reference(reference_model, visible):
            ref = generate(reference_model, ids, mask, **kw)
    finally:
        tiny_model("llama", "sdpa")
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
