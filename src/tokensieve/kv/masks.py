"""Per-layer attention masks: a compressed layer stores its own entries (layers may keep
different numbers; short batch rows and heads have filler slots), so the model's shared mask
is replaced, for that layer only, when it would be wrong."""

from __future__ import annotations

import torch

from .cache import CompressedLayer


def allowed(mask: torch.Tensor) -> torch.Tensor:
    """Boolean 'may attend' view of a bool or additive float mask."""
    return mask if mask.dtype == torch.bool else mask == 0


def layer_mask(layer: CompressedLayer, original: torch.Tensor | None, q: int,
               batch: int, groups: int) -> torch.Tensor:
    """(B, 1|Hq, q, S+q) mask for one compressed layer: real stored slots are visible to every
    new query; among the new tokens, causality and padding come from the model's own mask."""
    stored = layer.stored_length()
    valid = layer.slot_valid()
    device = layer.keys.device if layer.heads is None else layer.heads[0]["k"].device
    if valid is None:
        past = torch.ones(batch, 1, 1, stored, dtype=torch.bool, device=device)
    else:
        past = valid[:, :, None, :]
        if past.shape[1] > 1 and groups > 1:
            past = past.repeat_interleave(groups, dim=1)
    if original is None:
        new = torch.ones(q, q, dtype=torch.bool, device=device).tril()[None, None]
    else:
        new = allowed(original[..., -q:])
    heads = max(past.shape[1], new.shape[1])
    mask = torch.cat([past.expand(batch, heads, q, stored), new.expand(batch, heads, q, q)], -1)
    if original is not None and original.dtype != torch.bool:
        zero = torch.zeros((), dtype=original.dtype, device=device)
        mask = torch.where(mask, zero, torch.finfo(original.dtype).min)
    return mask


def shared_mask_fits(mask: torch.Tensor | None, layer: CompressedLayer, q: int) -> bool:
    """Whether the model's shared mask is right for this layer as it is: every stored slot
    is real and the mask is as wide as the layer (stored + q). The mask is judged by its own
    width, never by the reference layer's length, which an earlier layer's eviction in this
    very forward may already have changed."""
    if layer.slot_valid() is not None:
        return False
    stored = layer.stored_length()
    if mask is None:  # sdpa's is_causal: right only when nothing or one query is stored
        return q == 1 or stored == 0
    return mask.shape[-1] == stored + q
