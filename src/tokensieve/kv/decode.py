"""Decode eviction: during generation, cap a layer at the plan's ``max_size`` with the
prefill's rules, and drop entries that slid out of a model-wide sliding window."""

from __future__ import annotations

import torch

from .cache import CompressedCache, CompressedLayer
from .prefill import layer_inputs, share_units, stored_slots


def evict_decode(module, kwargs, cache: CompressedCache, layer: CompressedLayer,
                 hidden: torch.Tensor, num_layers: int) -> None:
    """Cap the layer at ``max_size`` entries per head with the prefill's rules: user
    spans, sinks and the newest tokens are forced, whole spans stay whole, ties go to
    the newer entry."""
    plan = cache.plan
    keys, values, positions, valid, slots = stored_slots(cache, layer)
    b = positions.shape[0]
    x = layer_inputs(module, kwargs, cache, hidden, keys, values, valid, num_layers)
    counts = torch.full((b,), plan.max_size, dtype=torch.long, device=keys.device)
    if plan.policy.needs_surprisal:  # the prefill's surprisal; newer tokens: row median
        known = cache.surprisal
        known = known if known is not None else torch.zeros(b, 1, device=keys.device)
        pos = positions[:, 0].clamp_max(known.shape[1] - 1)
        fill = known.median(-1, keepdim=True).values.expand_as(pos)
        x.shared["surprisal"] = torch.where(positions[:, 0] < known.shape[1],
                                            known.gather(-1, pos), fill)
        share_units(x, plan, slots)   # the prefill's units (or chunks), as at prefill
    layer.retain(plan.select(x, counts, slots=slots, prefer="late"))


def slide(layer: CompressedLayer) -> None:
    """Drop the entries that slid out of a model-wide sliding window: the next query (at
    position ``seen``) sees only positions > seen - sliding_window, as transformers' own
    sliding layer does; afterwards every stored entry is visible, so the model's mask stays
    right."""
    inside = layer.positions > layer.seen - layer.sliding_window
    valid = layer.slot_valid()
    if valid is not None:
        inside = inside & valid
        if bool((inside == valid).all()):
            return
    elif bool(inside.all()):
        return
    layer.retain(inside)
