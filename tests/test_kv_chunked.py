"""Chunked prefill (issue 22): ``Session.prefill`` reads a context chunk by chunk and keeps
the plan's share of everything read so far after each chunk, so the cache never holds more
than the budget plus one chunk."""

from __future__ import annotations

import pytest
import torch
from kv_models import random_ids, tiny_model

from tokensieve import InputError, UsageError, kv
from tokensieve.kv.api import chunk_bounds
from tokensieve.kv.plan import Plan


def _kept(layer) -> list[list[int]]:
    """Sorted stored positions of each head of batch row 0."""
    _, _, pos = layer.dense_view()
    valid = layer.slot_valid()
    return [sorted((pos[0, h][valid[0, h]] if valid is not None else pos[0, h]).tolist())
            for h in range(pos.shape[1])]


def _prefill(model, ids, policy="information", keep=0.25, chunk=64, **options):
    with kv.compress(model, policy, keep=keep, **options) as s, torch.no_grad():
        cache = s.prefill(ids, chunk=chunk)
    return s, cache


@pytest.mark.parametrize("policy", ["information", "snapkv", "streaming_llm"])
def test_one_chunk_is_the_one_shot_prefill(policy):
    model = tiny_model("llama")
    ids = random_ids(120, seed=3)
    with kv.compress(model, policy, keep=0.25) as s, torch.no_grad():
        model(ids, use_cache=True)
    one_shot = s.last_cache
    _, chunked = _prefill(model, ids, policy, chunk=512)
    for a, b in zip(one_shot.layers, chunked.layers, strict=True):
        assert _kept(a) == _kept(b)
        assert torch.equal(a.dense_view()[0], b.dense_view()[0])


@pytest.mark.parametrize("policy", ["information", "snapkv", "h2o"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunks_end_with_the_exact_budget_and_a_peak_of_budget_plus_one_chunk(policy, arch):
    model = tiny_model(arch)
    t, chunk, keep = 512, 64, 0.25
    ids = random_ids(t, seed=5)
    s, cache = _prefill(model, ids, policy, keep=keep, chunk=chunk)
    budget = s.plan.budget(t)
    for layer in cache.layers:
        assert [len(h) for h in _kept(layer)] == [budget] * model.config.num_key_value_heads
    assert cache.get_seq_length() == t
    with kv.compress(model, policy, keep=keep) as one, torch.no_grad():
        model(ids, use_cache=True)
    per_entry = cache.nbytes() / cache.entries()
    layers, heads = len(cache.compressible_layers()), model.config.num_key_value_heads
    held = (budget + chunk) * per_entry * layers * heads
    # + the scoring state of one chunk: a float32 chunk of logits, hidden states, surprisal
    cfg = model.config
    scoring = 4 * (chunk * cfg.vocab_size + 2 * chunk * cfg.hidden_size + 2 * t)
    assert cache.nbytes() == one.last_cache.nbytes()
    assert cache.nbytes() < cache.peak_bytes <= held + scoring
    # one-shot: 'information' holds every layer's whole context until its forward ends,
    # a per-layer policy one layer's; chunked: one chunk
    assert cache.peak_bytes < (0.6 if policy == "information" else 1.0) * \
        one.last_cache.peak_bytes


def test_the_surprisal_across_a_chunk_end_is_the_models_own():
    """The first token of a chunk is scored from the last token of the one before, which saw
    the whole first chunk: up to there the chunked surprisal equals the full forward's."""
    from tokensieve.scoring.surprisal import token_surprisal

    model = tiny_model("llama")
    ids = random_ids(200, seed=6)
    _, cache = _prefill(model, ids, keep=0.5, chunk=64)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        ref = token_surprisal(model, out.hidden_states[-1], ids)
    assert cache.surprisal.shape == (1, 200)
    # (token 0 is predicted by nothing: it gets a filler from what its chunk knows)
    assert torch.allclose(cache.surprisal[:, 1:65], ref[:, 1:65], atol=1e-4)


def test_protected_and_whole_spans_survive_chunking():
    model = tiny_model("llama")
    ids = random_ids(400, seed=7)
    protect, whole = [(10, 14), (300, 306)], [(60, 70)]   # 60..70 crosses the end at 64
    assert all(not (60 < b < 70) for _, b in chunk_bounds(400, 64, Plan.build(
        "information", 0.25, whole=whole)))
    _, cache = _prefill(model, ids, keep=0.125, chunk=64, protect=protect, whole=whole)
    for layer in cache.layers:
        for kept in _kept(layer):
            for a, b in protect:
                assert set(range(a, b)) <= set(kept)
            inside = set(range(60, 70)) & set(kept)
            assert not inside or inside == set(range(60, 70))


def test_generate_after_a_chunked_prefill_matches_the_model_at_keep_one():
    model = tiny_model("llama")
    ids = random_ids(150, seed=8)
    question = random_ids(6, seed=9)
    full = torch.cat([ids, question], 1)
    with torch.no_grad():
        plain = model.generate(full, attention_mask=torch.ones_like(full), max_new_tokens=6,
                               do_sample=False)
    with kv.compress(model, keep=1.0) as s, torch.no_grad():
        cache = s.prefill(ids, chunk=48)
        out = model.generate(full, attention_mask=torch.ones_like(full), past_key_values=cache,
                             max_new_tokens=6, do_sample=False)
    assert torch.equal(out, plain)
    with kv.compress(model, keep=0.25) as s, torch.no_grad():
        cache = s.prefill(ids, chunk=48)
        out = model.generate(full, attention_mask=torch.ones_like(full), past_key_values=cache,
                             max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, 162) and torch.equal(out[:, :156], full)
    assert cache.get_seq_length() == 161


def test_rows_of_a_batch_are_compressed_as_alone():
    model = tiny_model("llama")
    ids = random_ids(160, batch=2, seed=10)
    _, both = _prefill(model, ids, chunk=64)
    _, alone = _prefill(model, ids[1:], chunk=64)
    for a, b in zip(both.layers, alone.layers, strict=True):
        pos_a, pos_b = a.dense_view()[2], b.dense_view()[2]
        assert torch.equal(pos_a[1], pos_b[0])


def test_answer_reads_the_context_in_chunks(lm, report_text):
    model, tok = lm.model, lm.tokenizer
    q = ["What was the revenue in the third quarter?"]
    kw = dict(keep=0.5, max_new_tokens=8)
    one = kv.answer(model, tok, report_text, q, **kw)
    whole = kv.answer(model, tok, report_text, q, chunk=100_000, **kw)
    chunked = kv.answer(model, tok, report_text, q, chunk=128, **kw)
    assert whole.answers == one.answers and whole.stored_bytes == one.stored_bytes
    assert chunked.stored_bytes == one.stored_bytes
    assert chunked.context_tokens == one.context_tokens > 256
    with pytest.raises(UsageError, match="chunk= reads the context before any question"):
        kv.answer(model, tok, report_text, q, chunk=128, query_aware=True, **kw)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"chunk": 4}, UsageError, "chunk must be a whole number of tokens >= 16"),
    ({"chunk": 64, "policy": "global"}, UsageError, "cannot compress chunk by chunk"),
    ({"chunk": 64, "mask": True}, InputError, "rows without padding"),
    ({"chunk": 64, "empty": True}, InputError, "The context is empty"),
])
def test_bad_chunked_prefills_are_refused_in_one_line(kwargs, error, message):
    model = tiny_model("llama")
    ids = random_ids(0 if kwargs.get("empty") else 80, batch=2, seed=1)
    mask = torch.ones_like(ids)
    if kwargs.get("mask"):
        mask[0, :5] = 0
    with kv.compress(model, kwargs.get("policy", "information"), keep=0.5) as s:
        with pytest.raises(error, match=message):
            s.prefill(ids, chunk=kwargs["chunk"], attention_mask=mask)


def test_sliding_window_layers_and_a_decode_cap_after_chunks():
    """Gemma 3 mixes sliding-window layers (left as they are) with full ones (compressed
    chunk by chunk); ``max_size`` then caps generation as after a one-shot prefill."""
    from tokensieve.kv.cache import CompressedLayer

    model = tiny_model("gemma3")
    ids = random_ids(200, seed=11)
    with kv.compress(model, keep=0.25, max_size=40) as s, torch.no_grad():
        cache = s.prefill(ids[:, :190], chunk=64)   # generate needs a token after it
        full = [la for la in cache.layers if isinstance(la, CompressedLayer)]
        assert len(full) == 2
        for layer in full:
            assert [len(h) for h in _kept(layer)] == [s.plan.budget(190)] * 2
        out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                             max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == 208
    for layer in full:
        assert all(len(h) <= 40 for h in _kept(layer))


def test_the_same_entries_with_one_and_two_threads():
    model = tiny_model("llama")
    ids = random_ids(300, seed=12)
    threads = torch.get_num_threads()
    kept = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _, cache = _prefill(model, ids, keep=0.25, chunk=64)
            kept.append([_kept(la) for la in cache.layers])
    finally:
        torch.set_num_threads(threads)
    assert kept[0] == kept[1]
