"""Methods scored by the CLS token's attention: EViT and VisionZip."""

from __future__ import annotations

import torch

from ...engine.budget import keep_count
from ...engine.merge import contextual_groups
from ...errors import UsageError
from .base import Assignment, Step, VisionMethod, keep_mask_to_assignment, top_k_mask


def _cls(step: Step, name: str) -> torch.Tensor:
    if step.cls_attn is None:
        raise UsageError(f"vision method {name!r} ranks patches by the CLS token's attention and "
                         "this model has no CLS token; use 'tome', 'pitome', 'dart', 'todre', "
                         "'repshift' or 'default'.")
    return step.cls_attn


class EViT(VisionMethod):
    """EViT / VTC-CLS: keep the patches the CLS token attends to most; fuse the rest into
    one token, weighted by their attention."""

    name = "evit"
    needs = frozenset({"cls_attn"})

    def __init__(self, fuse: bool = True):
        self.fuse = fuse

    def assign(self, step: Step) -> Assignment:
        attn = _cls(step, self.name)
        if not self.fuse or step.n_keep >= step.n or step.n_keep < 2:
            return keep_mask_to_assignment(top_k_mask(attn, step.n_keep))
        keep = top_k_mask(attn, step.n_keep - 1)
        base = keep_mask_to_assignment(keep)
        fused = base.n_out  # one extra slot at the end
        slot = torch.where(keep, base.slot, torch.full_like(base.slot, fused))
        return Assignment(slot, fused + 1, weight=attn.float().clamp_min(1e-12))


class VisionZip(VisionMethod):
    """VisionZip: dominant tokens (highest CLS attention), then contextual tokens: the rest
    are grouped around evenly spaced targets by key similarity and averaged."""

    name = "visionzip"
    needs = frozenset({"cls_attn", "keys"})

    def __init__(self, contextual: float = 10 / 64):
        self.contextual = float(contextual)

    def assign(self, step: Step) -> Assignment:
        attn = _cls(step, self.name)
        n = attn.shape[-1]
        n_ctx = min(step.n_keep - 1, keep_count(self.contextual, step.n_keep))
        n_dom = step.n_keep - n_ctx
        dominant = top_k_mask(attn, n_dom)
        base = keep_mask_to_assignment(dominant)
        if n_ctx <= 0 or n_dom >= n:
            return base
        # the remaining tokens join evenly spaced targets among them by key similarity
        _, _, group = contextual_groups(step.keys, dominant, n_ctx)
        slot = base.slot.masked_scatter(~dominant, base.n_out + group)
        return Assignment(slot, base.n_out + n_ctx)
