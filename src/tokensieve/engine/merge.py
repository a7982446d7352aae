"""Actions on selected items: drop them, or merge them into kept ones (weighted average
with size tracking, as token-merging methods do)."""

from __future__ import annotations

import torch


def drop(x: torch.Tensor, keep: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Keep only the items where the boolean ``keep`` (length ``x.shape[dim]``) is true,
    in their original order."""
    idx = torch.nonzero(keep.to(torch.bool), as_tuple=False).flatten().to(x.device)
    return x.index_select(dim, idx)


def merge_weighted(
    x: torch.Tensor, sizes: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge items into groups: item ``i`` goes to group ``target[i]`` (groups 0..m-1).

    ``x`` is (n, d), ``sizes`` (n,) the number of original tokens each item already stands
    for. A group's vector is the size-weighted mean of its members and its size the sum,
    so merging twice equals merging once. Returns (m, d) vectors and (m,) sizes.
    """
    if x.dim() != 2 or sizes.shape != x.shape[:1] or target.shape != x.shape[:1]:
        raise ValueError("expected x (n, d), sizes (n,) and target (n,)")
    m = int(target.max().item()) + 1 if target.numel() else 0
    w = sizes.to(x.dtype).unsqueeze(-1)
    total = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
    total.index_add_(0, target, x * w)
    new_sizes = torch.zeros(m, dtype=sizes.dtype, device=x.device).index_add_(0, target, sizes)
    return total / new_sizes.to(x.dtype).clamp_min(1e-12).unsqueeze(-1), new_sizes
