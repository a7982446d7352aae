"""Policies scored by the attention an observation window of queries pays to each key:
SnapKV, TOVA, H2O, VATP."""

from __future__ import annotations

import torch

from ..attention import LayerInputs
from .base import Policy, pool1d


class SnapKV(Policy):
    """Mean window attention, max-pooled over neighbours (Li et al. 2024)."""

    name = "snapkv"

    def __init__(self, window: int | None = None, kernel: int = 7):
        self.window, self.kernel = window, kernel

    def score(self, x: LayerInputs) -> torch.Tensor:
        return pool1d(x.window_attention(self.window, reduce="mean"), self.kernel)


class TOVA(Policy):
    """Attention of the last token, averaged over heads (Oren et al. 2024); one choice per
    layer shared by all heads. ``window`` > 1 averages the last few queries; ``per_head``
    lets every KV head choose its own entries; ``kernel`` > 1 max-pools the scores over
    neighbouring tokens so that phrases around a strong token stay together."""

    name = "tova"

    def __init__(self, window: int = 1, per_head: bool = False, kernel: int = 1):
        self.window, self.per_head, self.kernel = window, per_head, kernel

    def score(self, x: LayerInputs) -> torch.Tensor:
        s = x.window_attention(self.window, reduce="mean")
        if not self.per_head:
            s = s.mean(1, keepdim=True).expand(-1, x.keys.shape[1], -1)
        return pool1d(s, self.kernel)


class H2O(Policy):
    """Accumulated attention received (Zhang et al. 2023), summed over the last ``window``
    queries (default 512) rather than all T, so the T x T matrix is never built."""

    name = "h2o"

    def __init__(self, window: int = 512):
        self.window = window

    def score(self, x: LayerInputs) -> torch.Tensor:
        return x.window_attention(self.window, reduce="sum")


class VATP(Policy):
    """Value-aware token pruning (Guo et al. 2024): window attention x L1 norm of the value."""

    name = "vatp"

    def __init__(self, window: int | None = None):
        self.window = window

    def score(self, x: LayerInputs) -> torch.Tensor:
        attn = x.window_attention(self.window, reduce="mean")
        return attn * x.values.float().abs().sum(-1)
