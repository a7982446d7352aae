"""Policies that spread the budget: ChunkKV (chunks, indices shared by neighbouring layers),
PyramidKV (more entries in lower layers), a global pool across layers (KVCompose-style
allocation by informativeness) and AdaKV (heads keep different numbers of entries)."""

from __future__ import annotations

import torch

from ..attention import LayerInputs
from .attention_based import SnapKV
from .base import Policy
from .information import unit_reduce


class ChunkKV(Policy):
    """Whole chunks of ``chunk`` tokens ranked by their mean window attention (Liu et al.
    2025); the ranking is computed once per group of ``reuse`` neighbouring layers."""

    name = "chunkkv"

    def __init__(self, chunk: int = 10, reuse: int = 2, window: int | None = None):
        self.chunk, self.reuse, self.window = chunk, reuse, window

    def score(self, x: LayerInputs) -> torch.Tensor:
        group = ("chunkkv", x.layer_idx // self.reuse, x.keys.shape[2])
        if group not in x.shared:
            s = x.window_attention(self.window, reduce="mean").mean(1)          # (B, T)
            # chunks of the row's real slots (padding and filler are in none), so a
            # left-padded row is cut as it is alone; every token of a chunk has the chunk's
            # score and the plan's stable position tie-break keeps a chunk whole when it fits
            real = x.valid if x.valid.dim() == 2 else x.valid.any(1)
            units = torch.where(real, (real.long().cumsum(-1) - 1) // max(1, self.chunk), -1)
            x.shared[group] = unit_reduce(s, units, "mean")
        return x.shared[group][:, None, :].expand(-1, x.keys.shape[1], -1)


class PyramidKV(SnapKV):
    """SnapKV scores with a pyramid of budgets: lower layers keep more (Cai et al. 2024);
    the share falls linearly from ``1 + spread`` to ``1 - spread``, mean 1."""

    name = "pyramidkv"

    def __init__(self, spread: float = 0.5, **kw):
        super().__init__(**kw)
        self.spread = spread

    def layer_share(self, layer_idx: int, num_layers: int) -> float:
        if num_layers <= 1:
            return 1.0
        return 1 + self.spread - 2 * self.spread * layer_idx / (num_layers - 1)


class GlobalPool(SnapKV):
    """One pool for all layers, allocated by how spread out each layer's attention is
    (KVCompose-style): a layer whose window attention needs many keys to reach 90% of its
    mass gets more entries."""

    name = "global"
    deferred = True

    @staticmethod
    def informativeness(scores: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
        """(B,) number of entries that hold ``mass`` of each row's score mass."""
        s = scores.float().clamp_min(0).mean(1)                          # (B, T)
        s = s / s.sum(-1, keepdim=True).clamp_min(1e-12)
        cum = torch.sort(s, dim=-1, descending=True).values.cumsum(-1)
        return (cum < mass).sum(-1).float() + 1


class AdaKV(SnapKV):
    """SnapKV scores, selected jointly over the heads of a layer (Feng et al. 2024): heads
    with sharp attention give entries to heads with spread attention; every head keeps at
    least ``floor`` of the mean per-head budget. Storage becomes per-head blocks."""

    name = "adakv"
    head_adaptive = True

    def __init__(self, floor: float = 0.2, **kw):
        super().__init__(**kw)
        self.floor = floor
