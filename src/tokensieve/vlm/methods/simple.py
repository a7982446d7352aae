"""Baselines: random tokens and a uniform grid."""

from __future__ import annotations

import math

import torch

from .base import Inside, Visual, VLMMethod, top


class RandomTokens(VLMMethod):
    """Keep ``count`` tokens chosen uniformly at random (seeded)."""

    name = "random"
    stages = frozenset({"before", "inside"})

    def select(self, v: Visual | Inside) -> torch.Tensor:
        return top(torch.rand(v.n, generator=v.generator), v.count)


class UniformGrid(VLMMethod):
    """Keep tokens spread evenly over the image: every s-th row and column of the patch
    grid (s chosen so that at least ``count`` fall on it), then the first ``count`` of them in
    a spread order; without a grid, evenly spaced positions in the sequence."""

    name = "grid"
    stages = frozenset({"before", "inside"})

    def select(self, v: Visual | Inside) -> torch.Tensor:
        n = v.n
        if v.grid is None or v.grid[0] * v.grid[1] != n:
            idx = torch.linspace(0, n - 1, v.count).round().long()
            mask = torch.zeros(n, dtype=torch.bool)
            mask[idx] = True
            return mask  # count <= n: the rounded positions are distinct
        h, w = v.grid
        stride = max(1, math.floor(math.sqrt(n / v.count)))
        off = stride // 2
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None, :].expand(h, w)
        dr, dc = (rows - off) % stride, (cols - off) % stride
        dist = (torch.minimum(dr, stride - dr) + torch.minimum(dc, stride - dc)).flatten()
        on = (dist == 0).nonzero().flatten()
        if len(on) >= v.count:  # evenly spaced among the grid points
            mask = torch.zeros(n, dtype=torch.bool)
            mask[on[torch.linspace(0, len(on) - 1, v.count).round().long()]] = True
            return mask
        return top(-dist.float(), v.count)  # the grid points, then their nearest neighbours
