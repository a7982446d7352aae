"""Policies that need no attention: StreamingLLM, key norm, random."""

from __future__ import annotations

import torch

from ..attention import LayerInputs
from .base import Policy


class StreamingLLM(Policy):
    """Sink tokens + the most recent window (Xiao et al. 2023): score = position."""

    name = "streaming_llm"

    def score(self, x: LayerInputs) -> torch.Tensor:
        b, h, t, _ = x.keys.shape
        return torch.arange(t, dtype=torch.float32, device=x.keys.device).expand(b, h, t)


class KeyNorm(Policy):
    """Keep keys with a small L2 norm (Devoto et al. 2024: low-norm keys draw attention)."""

    name = "knorm"

    def score(self, x: LayerInputs) -> torch.Tensor:
        return -x.keys.float().norm(dim=-1)


class RandomPolicy(Policy):
    """Uniformly random entries (seeded): the floor every method must beat."""

    name = "random"

    def score(self, x: LayerInputs) -> torch.Tensor:
        g = torch.Generator().manual_seed(x.seed * 1000 + x.layer_idx)
        return torch.rand(x.keys.shape[:3], generator=g).to(x.keys.device)
