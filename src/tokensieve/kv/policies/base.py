"""A policy = a scorer (which entries carry information) + how its budget is spread.

``score`` returns (B, H, T), higher = keep. The plan (``plan.py``) charges protected entries
first (sinks, recent window, user spans) and keeps the top of the rest, per KV head with the
same count on every head, unless the policy spreads the budget itself (per-layer or per-head).
"""

from __future__ import annotations

import torch

from ..attention import LayerInputs


class Policy:
    name = "base"
    deferred = False       # True: score every layer first, then allocate one global pool
    head_adaptive = False  # True: heads of a layer keep different numbers of entries
    needs_surprisal = False  # True: scored after the forward, from the LM's own surprisal
    needs_repeat = False     # True: scored after the forward by a repeat pass of the context

    def score(self, x: LayerInputs) -> torch.Tensor:
        raise NotImplementedError

    def held_window(self, plan_window: int) -> int:
        """How many of the last hidden positions a policy scored after the forward
        (``needs_surprisal``) still reads; everything else of the layer's input is released."""
        return max(plan_window, getattr(self, "window", 0) or 0)

    def layer_share(self, layer_idx: int, num_layers: int) -> float:
        """Multiplier on the layer's keep count, mean 1 over the compressible layers
        (PyramidKV-style schedules override it)."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def pool1d(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max-pool along the last axis over ``kernel`` neighbours (SnapKV clusters tokens)."""
    if kernel <= 1:
        return scores
    shape = scores.shape
    flat = scores.reshape(-1, 1, shape[-1])
    out = torch.nn.functional.max_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    return out[..., : shape[-1]].reshape(shape)
