"""HiPrune: anchor, buffer and register tokens from the vision tower's layer hierarchy."""

from __future__ import annotations

import torch

from ...engine.budget import keep_count
from ...errors import UsageError
from .base import Visual, VLMMethod, top
from .signals import attention_score, check_fraction, require


def neighbours(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N,) the tokens left, right, above or below a token of ``mask`` on the
    raster-order ``grid`` (h, w), the marked tokens themselves excluded."""
    h, w = grid
    m = mask.view(h, w)
    near = torch.zeros_like(m)
    near[1:] |= m[:-1]
    near[:-1] |= m[1:]
    near[:, 1:] |= m[:, :-1]
    near[:, :-1] |= m[:, 1:]
    return (near & ~m).flatten()


class HiPrune(VLMMethod):
    """HiPrune: ``anchors`` of the budget go to anchor tokens (highest attention at the
    middle tower layer ``middle``, which attends to objects; default: the middle one), then
    their 4-neighbours on the patch grid as buffer tokens (the most attended first when they
    do not all fit), then register tokens: the highest attention at the deep layer ``deep``
    among the rest fill the budget. Attention is the [CLS] query's, or without a [CLS] the
    attention each token receives."""

    name = "hiprune"
    needs = frozenset({"attention", "grid"})  # reads cls_attention too when there is one

    def __init__(self, anchors: float = 0.1, middle: int | None = None, deep: int = -1):
        self.anchors = check_fraction(anchors, "anchors", self.name)
        self.middle = middle
        self.deep = deep

    def select(self, v: Visual) -> torch.Tensor:
        grid = require(v, "grid", self.name, "the patch grid, to find buffer neighbours")
        if grid[0] * grid[1] != v.n:
            raise UsageError(f"VLM method {self.name!r}: the grid {grid} does not hold the "
                             f"image's {v.n} tokens.")
        maps = v.cls_attention if v.cls_attention is not None else \
            require(v, "attention", self.name, "the vision tower's attention")
        middle = len(maps) // 2 if self.middle is None else self.middle
        mid = attention_score(v, middle, self.name, "middle")
        deep = attention_score(v, self.deep, self.name, "deep")
        keep = top(mid, keep_count(self.anchors, v.count)) if self.anchors > 0 else \
            torch.zeros(v.n, dtype=torch.bool, device=mid.device)
        buffer = neighbours(keep, grid)
        room = v.count - int(keep.sum())
        keep |= top(mid.masked_fill(~buffer, float("-inf")), min(room, int(buffer.sum())))
        rest = v.count - int(keep.sum())
        return keep | top(deep.masked_fill(keep, float("-inf")), rest)
