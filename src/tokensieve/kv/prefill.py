"""Prefill selection: right after a layer has stored the context, score its entries and keep
the plan's share, or (deferred and surprisal-scored policies) hold what the later selection
needs until the forward has finished."""

from __future__ import annotations

import torch

from ..errors import UsageError
from .attention import LayerInputs
from .cache import CompressedCache, CompressedLayer
from .masks import allowed
from .plan import Plan, Slots


def layer_inputs(module, kwargs, cache: CompressedCache, hidden, keys, values, valid,
                 num_layers: int) -> LayerInputs:
    """What the policy may score one layer with, from the attention module's call."""
    cos, sin = kwargs["position_embeddings"]
    return LayerInputs(module=module, layer_idx=module.layer_idx, num_layers=num_layers,
                       hidden=hidden, cos=cos, sin=sin, keys=keys, values=values,
                       valid=valid, window=cache.plan.window, seed=cache.plan.seed,
                       shared=cache.shared)


def check_sliding_window(layer: CompressedLayer, q: int, plan: Plan) -> None:
    """Refuse to compress a context that already fills a model-wide sliding window."""
    window = layer.sliding_window
    if window and q >= window and plan.keep < 1:
        raise UsageError(
            f"this model attends within a sliding window of {window} tokens on every "
            f"layer (config.sliding_window, no layer_types) and the context has {q} "
            f"tokens: entries past the window are never seen again, so compressing them "
            f"is meaningless. Compress contexts shorter than {window} tokens, or "
            "set config.sliding_window=None if the model was trained on full attention.")


def compress_prefill(module, kwargs, cache: CompressedCache, layer: CompressedLayer,
                     hidden: torch.Tensor, num_layers: int) -> None:
    """Select this layer's entries now, or leave it pending for a later selection."""
    plan = cache.plan
    mask = kwargs.get("attention_mask")
    if mask is None or mask.dim() != 4:
        valid = torch.ones(hidden.shape[0], hidden.shape[1], dtype=torch.bool,
                           device=hidden.device)
    else:
        valid = allowed(mask[:, 0, -1, :]).clone()
    n_real = valid.sum(-1)
    if module.layer_idx == cache.compressible_layers()[0]:
        whole = n_real if cache.context_tokens is None else \
            torch.full_like(n_real, cache.context_tokens)
        plan.check_context(whole)
    cache.n_real, cache.row_start = n_real, valid.shape[1] - n_real
    if plan.keep >= 1:
        return  # nothing removed: the cache stays exactly what the model wrote
    x = layer_inputs(module, kwargs, cache, hidden, layer.keys, layer.values, valid, num_layers)
    if plan.policy.needs_surprisal or plan.policy.needs_repeat:  # scored after the forward
        release(x, plan.policy.held_window(plan.window))
        cache.pending[module.layer_idx] = (x, None, None)
        return
    scores = plan.policy.score(x)
    if plan.policy.deferred:
        info = plan.policy.informativeness(scores.masked_fill(~valid[:, None], 0))
        release(x, 0)   # scored: only the validity is needed to select later
        cache.pending[module.layer_idx] = (x, scores, info)
        return
    order = cache.compressible_layers()
    counts = plan.keep_counts(n_real, order.index(module.layer_idx), len(order))
    layer.retain(plan.select(x, counts, scores))


def release(x: LayerInputs, last: int) -> None:
    """Keep only copies of the ``last`` positions of the layer's hidden states and RoPE
    tables (what deferred scoring still reads) and drop everything else the layer's inputs
    point to: a slice would be a view holding the whole (B, T, D) activation alive until
    the end of the forward, for every layer."""
    x.hidden, x.cos, x.sin = (t[:, t.shape[1] - min(last, t.shape[1]):].clone()
                              for t in (x.hidden, x.cos, x.sin))
    x._attn.clear()


def share_units(x: LayerInputs, plan: Plan, slots: Slots) -> None:
    """Units for unit-level scoring: the plan's spans, or else each slot's rank among the
    row's real tokens (so fixed chunks never depend on left padding)."""
    x.shared["units"] = plan.unit_ids(slots)
    x.shared["rank"] = torch.where(slots.valid, slots.rank, -1).amax(1)


def select_by_surprisal(cache: CompressedCache, surprisal: torch.Tensor) -> None:
    """Evict every pending layer by the context's (B, T) ``surprisal``."""
    plan = cache.plan
    order = cache.compressible_layers()
    for i, (x, _, _) in cache.pending.items():
        slots = Slots.prefill(x.valid)
        x.shared["surprisal"] = surprisal.masked_fill(~x.valid, 0)
        share_units(x, plan, slots)
        counts = plan.keep_counts(cache.n_real, order.index(i), len(order))
        # ties (the tokens of one unit) go to the later token: a cut unit keeps its end
        cache.layers[i].retain(plan.select(x, counts, slots=slots, prefer="late"))


def stored_slots(cache: CompressedCache, layer: CompressedLayer):
    """(keys, values, positions, valid (B, H, S), Slots) of a stored layer."""
    keys, values, positions = layer.dense_view()
    valid = layer.slot_valid()
    b, h, s = positions.shape
    valid = torch.ones(b, h, s, dtype=torch.bool, device=keys.device) if valid is None \
        else valid.expand(b, h, s)
    row_start = cache.row_start if cache.row_start is not None else \
        torch.zeros(b, dtype=torch.long, device=keys.device)
    slots = Slots.stored(valid, positions, row_start.to(keys.device), layer.seen)
    return keys, values, positions, valid, slots


def compress_chunk(module, kwargs, cache: CompressedCache, layer: CompressedLayer,
                   hidden: torch.Tensor, num_layers: int) -> None:
    """Chunked prefill (:meth:`~.api.Session.prefill`): after one more chunk of the context,
    keep the plan's share of every token seen so far, chosen from the entries kept before
    and the chunk's. Surprisal-scored policies wait for the chunk's forward to end (its
    surprisal comes from the final hidden states), as at prefill."""
    plan = cache.plan
    if plan.policy.needs_repeat:
        raise UsageError(f"the {plan.policy.name!r} KV policy repeats the whole context after "
                         "its prefill and cannot score it chunk by chunk; prefill in one "
                         "forward (no chunk=) or choose another policy.")
    keys, values, positions, valid, slots = stored_slots(cache, layer)
    x = layer_inputs(module, kwargs, cache, hidden, keys, values, valid, num_layers)
    if plan.policy.needs_surprisal:
        release(x, plan.policy.held_window(plan.window))
        cache.pending[module.layer_idx] = (x, slots, positions)
        return
    order = cache.compressible_layers()
    counts = plan.keep_counts(slots.seen, order.index(module.layer_idx), len(order))
    layer.retain(plan.select(x, counts, slots=slots, prefer="late"))


def select_chunk_by_surprisal(cache: CompressedCache) -> None:
    """Evict every pending layer of a chunk by the surprisal of all tokens seen so far."""
    plan = cache.plan
    order = cache.compressible_layers()
    known = cache.surprisal
    for i, (x, slots, positions) in cache.pending.items():
        pos = positions[:, 0].clamp(0, known.shape[1] - 1)
        x.shared["surprisal"] = known.gather(-1, pos).masked_fill(~x.valid[:, 0], 0)
        share_units(x, plan, slots)
        counts = plan.keep_counts(slots.seen, order.index(i), len(order))
        cache.layers[i].retain(plan.select(x, counts, slots=slots, prefer="late"))
