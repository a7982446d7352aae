"""Baselines and score-free methods: random, uniform grid, representation shift."""

from __future__ import annotations

import math

import torch

from .base import Assignment, Step, VisionMethod, keep_mask_to_assignment, top_k_mask


class RandomMethod(VisionMethod):
    """Keep a random subset of patch tokens (seeded, different for every image)."""

    name = "random"

    def assign(self, step: Step) -> Assignment:
        g = step.generator
        noise = torch.rand(step.x.shape[:2], generator=g, device=g.device if g else "cpu")
        return keep_mask_to_assignment(top_k_mask(noise.to(step.x.device), step.n_keep))


def grid_indices(h: int, w: int, k: int) -> torch.Tensor:
    """``k`` raster indices spread evenly over an h x w grid (rows and columns in the
    grid's aspect ratio, then evenly along the remaining count)."""
    rows = max(1, min(h, round(math.sqrt(k * h / w))))
    cols = max(1, min(w, math.ceil(k / rows)))
    ys = torch.linspace(0, h - 1, rows).round().long()
    xs = torch.linspace(0, w - 1, cols).round().long()
    idx = (ys[:, None] * w + xs[None, :]).flatten().unique()
    if idx.numel() > k:  # trim evenly
        idx = idx[torch.linspace(0, idx.numel() - 1, k).round().long()]
    elif idx.numel() < k:  # fill evenly from the rest
        rest = torch.ones(h * w, dtype=torch.bool)
        rest[idx] = False
        others = rest.nonzero().flatten()
        idx = torch.cat([idx, others[torch.linspace(0, others.numel() - 1, k - idx.numel())
                                     .round().long()]])
    return idx.sort().values


class GridMethod(VisionMethod):
    """Keep patches on a uniform grid (evenly spaced in the current order once tokens no
    longer form the image grid)."""

    name = "grid"

    def assign(self, step: Step) -> Assignment:
        b, n = step.x.shape[:2]
        if step.grid is not None and step.grid[0] * step.grid[1] == n:
            idx = grid_indices(*step.grid, step.n_keep)
        else:
            idx = torch.linspace(0, n - 1, step.n_keep).round().long().unique()
        keep = torch.zeros(b, n, dtype=torch.bool, device=step.x.device)
        keep[:, idx.to(step.x.device)] = True
        return keep_mask_to_assignment(keep)


class RepresentationShift(VisionMethod):
    """Keep the tokens the block changed most: ||output - input|| per token (representation
    shift; no attention map needed, so it works with any attention kernel)."""

    name = "repshift"
    needs = frozenset({"x_in"})

    def assign(self, step: Step) -> Assignment:
        shift = (step.x.float() - step.x_in.float()).norm(dim=-1)
        return keep_mask_to_assignment(top_k_mask(shift, step.n_keep))
