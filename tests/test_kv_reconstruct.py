"""The ``reconstruct`` KV policy (KVzip idea): entries scored by the attention a teacher-forced
repeat of the context gives them."""

from __future__ import annotations

import pytest
import torch
from kv_models import random_ids, tiny_model

from tokensieve import kv
from tokensieve.errors import UsageError


def _reference(model, ids: torch.Tensor, chunk: int, local: int | None = None
               ) -> list[torch.Tensor]:
    """Per layer (1, H_kv, T): the max eager attention any repeat query of a chunk gives
    each context entry, each chunk fed right after the context. ``local``: renormalised
    over the first ``local`` entries, the span the chunk repeats and the chunk itself."""
    t = ids.shape[1]
    kv_heads = model.config.num_key_value_heads
    g = model.config.num_attention_heads // kv_heads
    best = None
    for a in range(0, t, chunk):
        part = ids[:, a:a + chunk]
        # each repeat token sits t positions after its original (a gap where earlier chunks
        # would be)
        pos = torch.cat([torch.arange(t), t + a + torch.arange(part.shape[1])])[None]
        with torch.no_grad():
            att = model(torch.cat([ids, part], 1), position_ids=pos,
                        output_attentions=True).attentions
        per_layer = []
        for layer in att:                               # (1, Hq, t + c, t + c)
            rows = layer[:, :, t:]                       # repeat queries over every key
            if local is not None:
                inside = torch.zeros(rows.shape[-1], dtype=torch.bool)
                inside[:local] = True
                inside[a:a + part.shape[1]] = True
                inside[t:] = True
                rows = rows * inside
                rows = rows / rows.sum(-1, keepdim=True)
            rows = rows[..., :t]
            per_layer.append(rows.reshape(1, kv_heads, g, -1, t).amax(dim=(2, 3)))
        best = per_layer if best is None else [torch.maximum(x, y)
                                               for x, y in zip(best, per_layer, strict=True)]
    return best


def _scores(model, ids, chunk, settings="", **options):
    """(scores the repeat pass computed per layer, the compressed cache)."""
    import tokensieve.kv.reconstruction as rec

    got, real = {}, rec.repeat_scores

    def spy(*args, **kwargs):
        got.update(real(*args, **kwargs))
        return got

    rec.repeat_scores = spy
    try:
        policy = f"reconstruct:chunk={chunk}{settings}"
        with kv.compress(model, policy, keep=0.25, **options) as s, torch.no_grad():
            model(ids, use_cache=True)
    finally:
        rec.repeat_scores = real
    return got, s.last_cache


@pytest.mark.parametrize(("chunk", "local"), [(64, None), (24, None), (24, 4), (16, 2)])
def test_repeat_scores_equal_the_models_own_attention(chunk, local):
    model = tiny_model("llama", "eager")
    try:
        ids = random_ids(48, seed=3)
        got, _ = _scores(model, ids, chunk, "" if local is None else f",local=true,sinks={local}")
        ref = _reference(model, ids, chunk, local)
        for i, r in enumerate(ref):
            assert torch.allclose(got[i], r, atol=1e-5), i
    finally:
        tiny_model("llama", "sdpa")


def test_each_head_keeps_the_entries_the_repeat_attends_to_most():
    model = tiny_model("llama")
    ids = random_ids(64, seed=5)
    got, cache = _scores(model, ids, 512, sinks=0, recent=0)
    differ = False
    for i, layer in enumerate(cache.layers):
        _, _, pos = layer.dense_view()
        for h in range(pos.shape[1]):
            kept = set(pos[0, h].tolist())
            top = torch.topk(got[i][0, h], 16).indices.tolist()
            assert kept == set(top), (i, h)
            differ |= kept != set(pos[0, 0].tolist())
    assert differ   # per head, not one set for the whole layer


def test_left_padded_row_keeps_what_it_keeps_alone():
    model = tiny_model("llama")
    short, long = random_ids(70, seed=41), random_ids(96, seed=42)

    def kept(ids, mask):
        with kv.compress(model, "reconstruct:chunk=32", keep=0.5, recent=4) as s, \
                torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
        pad = int((mask[-1] == 0).sum())
        out = []
        for layer in s.last_cache.layers:
            _, _, pos = layer.dense_view()
            valid = layer.slot_valid()
            row = ids.shape[0] - 1
            out.append([sorted(p - pad for p, ok in zip(pos[row, h].tolist(),
                        (valid[row, h] if valid is not None else torch.ones_like(pos[row, h],
                         dtype=torch.bool)).tolist(), strict=True) if ok)
                        for h in range(pos.shape[1])])
        return out

    alone = kept(short, torch.ones_like(short))
    ids = torch.zeros(2, 96, dtype=torch.long)
    mask = torch.zeros(2, 96, dtype=torch.long)
    ids[0], mask[0] = long[0], 1
    ids[1, 26:], mask[1, 26:] = short[0], 1
    assert kept(ids, mask) == alone


def test_max_size_during_generation_and_refusals():
    model = tiny_model("llama")
    ids = random_ids(60, seed=8)
    with kv.compress(model, "reconstruct", keep=0.5, max_size=34) as s, torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                       min_new_tokens=8, do_sample=False)
    assert all(layer.stored_length() <= 34 for layer in s.last_cache.layers)
    with kv.compress(model, "reconstruct", keep=0.5) as s, torch.no_grad():
        with pytest.raises(UsageError, match="cannot score it chunk by chunk"):
            s.prefill(ids, chunk=20)
    with pytest.raises(UsageError, match="chunk"):
        kv.compress(model, "reconstruct:chunk=4", keep=0.5).__enter__()
    with kv.compress(model, "reconstruct", keep=0.5), torch.no_grad():
        with pytest.raises(Exception, match="input_ids"):
            model(inputs_embeds=model.get_input_embeddings()(ids), use_cache=True)


def test_same_selection_with_one_and_two_threads():
    model = tiny_model("qwen3")
    ids = random_ids(80, seed=9)
    kept = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with kv.compress(model, "reconstruct:chunk=32", keep=0.3) as s, torch.no_grad():
                model(ids, use_cache=True)
            kept.append([layer.dense_view()[2].tolist() for layer in s.last_cache.layers])
    finally:
        torch.set_num_threads(before)
    assert kept[0] == kept[1]


def test_units_mode_keeps_whole_units_the_same_on_every_head():
    model = tiny_model("llama")
    ids = random_ids(96, seed=4)
    units = [(i, i + 8) for i in range(0, 96, 8)]
    with kv.compress(model, "reconstruct:units=true", keep=0.25, units=units, sinks=0,
                     recent=0) as s, torch.no_grad():
        model(ids, use_cache=True)
    for layer in s.last_cache.layers:
        _, _, pos = layer.dense_view()
        heads = [sorted(pos[0, h].tolist()) for h in range(pos.shape[1])]
        assert all(h == heads[0] for h in heads)
        kept = set(heads[0])
        assert len(kept) == 24
        whole = [u for u in units if set(range(*u)) <= kept]
        assert len(whole) == 3 and sum(8 for _ in whole) == len(kept)


def test_global_pool_spreads_one_budget_over_layers_and_heads():
    model = tiny_model("llama")
    ids = random_ids(120, seed=12)
    policy = "reconstruct:pool=global,local=true,chunk=40"
    kept = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with kv.compress(model, policy, keep=0.25, recent=4) as s, torch.no_grad():
                model(ids, use_cache=True)
            kept.append([layer.entries() for layer in s.last_cache.layers])
            heads = [[len(set(p.tolist())) for p in layer.dense_view()[2][0]]
                     for layer in s.last_cache.layers]
    finally:
        torch.set_num_threads(before)
    assert kept[0] == kept[1]
    budget = s.plan.budget(120) * 2 * len(kept[0])
    assert sum(kept[0]) <= budget and sum(kept[0]) >= 0.97 * budget
    assert len(set(kept[0])) > 1                        # layers keep different numbers
    assert any(len(set(h)) > 1 for h in heads)          # and heads within a layer too


def test_bad_reconstruct_settings():
    model = tiny_model("llama")
    for bad in ("reconstruct:pool=all", "reconstruct:reduce=sum",
                "reconstruct:pool=global,units=true"):
        with pytest.raises(UsageError):
            kv.compress(model, bad, keep=0.5).__enter__()
