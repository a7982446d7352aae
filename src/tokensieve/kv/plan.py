"""How much of a layer to keep and which entries: Budget (ratio, per-layer share) ->
protection (sinks, recent window, user spans, charged first) -> selection (per head, or
jointly over heads / layers for adaptive policies)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.budget import split_pool
from ..errors import BudgetError, UsageError
from .attention import LayerInputs
from .policies import Policy, get_policy


def ranked_keep(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep the ``counts[...]`` highest scores along the last axis (stable: earlier first on
    ties). ``scores`` (..., T), ``counts`` broadcastable to scores.shape[:-1]."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                   .expand_as(order).contiguous())
    return ranks < counts[..., None]


@dataclass
class Plan:
    """What a compressed cache does: the policy, the fraction removed, and what is protected.

    ``ratio`` is the fraction of the context's entries *removed* (kvpress's convention):
    0.75 keeps a quarter. ``sinks`` first and ``recent`` last tokens are never evicted,
    nor any token span in ``protect`` (start, end) in context-token positions. Spans in
    ``whole`` (multi-token numbers, IDs) are kept whole or evicted whole, never cut.
    ``max_size`` caps the entries per head during generation (decode-time eviction).
    """

    policy: Policy
    ratio: float
    sinks: int = 4
    recent: int = 32
    window: int = 32
    protect: tuple[tuple[int, int], ...] = ()
    whole: tuple[tuple[int, int], ...] = ()
    max_size: int | None = None
    seed: int = 0
    shared: dict = field(default_factory=dict)

    @classmethod
    def build(cls, policy="default", ratio=0.5, **kw) -> Plan:
        bad = isinstance(ratio, bool) or not isinstance(ratio, int | float) or math.isnan(ratio)
        if bad or not 0 <= ratio < 1:
            raise UsageError(
                f"ratio is the fraction of the KV cache to remove and must be in [0, 1), "
                f"got {ratio!r}; e.g. ratio=0.75 keeps a quarter of the context's entries.")
        for name in ("sinks", "recent", "window"):
            v = kw.get(name, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"{name} must be a whole number >= 0, got {v!r}.")
        ms = kw.get("max_size")
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, int)
                               or ms <= kw.get("sinks", 4) + 1):
            raise UsageError(f"max_size must be a whole number of entries larger than the sink "
                             f"tokens, got {ms!r}.")
        protect = cls._spans("protect", kw.pop("protect", None))
        whole = cls._spans("whole", kw.pop("whole", None))
        return cls(policy=get_policy(policy), ratio=float(ratio), protect=protect, whole=whole,
                   **kw)

    @staticmethod
    def _spans(name: str, spans) -> tuple[tuple[int, int], ...]:
        out = []
        for span in spans or ():
            try:
                a, b = (int(v) for v in span)
            except (TypeError, ValueError):
                raise UsageError(
                    f"{name} takes (start, end) token positions, got {span!r}.") from None
            if not 0 <= a < b:
                raise UsageError(f"{name} span {span!r} must satisfy 0 <= start < end.")
            out.append((a, b))
        return tuple(out)

    def check_context(self, n_real: torch.Tensor) -> None:
        """User spans must lie inside the context, and protected ones fit the budget."""
        shortest = int(n_real.min())
        for a, b in (*self.protect, *self.whole):
            if b > shortest:
                raise UsageError(f"span ({a}, {b}) reaches past the context, which has "
                                 f"{shortest} tokens; give positions inside it.")
        protected = len({i for a, b in self.protect for i in range(a, b)})
        budget = int(round(shortest * (1 - self.ratio)))
        if protected > budget:
            raise BudgetError(
                f"protected spans hold {protected} tokens but the budget keeps {budget} of "
                f"{shortest} (over by {protected - budget}); lower the ratio or protect less.")

    # --- budget --------------------------------------------------------------------------
    def keep_counts(self, n_real: torch.Tensor, layer_idx: int, num_layers: int) -> torch.Tensor:
        """Entries per head this layer keeps for each row (B,)."""
        share = self.policy.layer_share(layer_idx, num_layers)
        kept = torch.round(n_real.double() * (1 - self.ratio) * share).long()
        return torch.minimum(kept.clamp_min(1), n_real)

    def forced(self, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(B, T) entries that must stay: sinks, recent window, user spans. Sinks and window
        shrink to fit small budgets; user spans never do."""
        rank = valid.long().cumsum(-1) - 1
        n = valid.sum(-1, keepdim=True)
        c = counts[:, None]
        sinks = torch.clamp(c, max=self.sinks)
        recent = torch.clamp(c - sinks, min=0, max=self.recent)
        keep = valid & ((rank < sinks) | (rank >= n - recent))
        for a, b in self.protect:
            keep |= valid & (rank >= a) & (rank < b)
        return keep

    # --- selection -----------------------------------------------------------------------
    def select(self, x: LayerInputs, counts: torch.Tensor, scores: torch.Tensor | None = None):
        """Keep mask (B, H, T) for one layer keeping ``counts`` (B,) entries per head."""
        if scores is None:
            scores = self.policy.score(x)
        valid = x.valid if x.valid.dim() == 3 else x.valid[:, None, :]
        real = x.valid if x.valid.dim() == 2 else x.valid.all(1)
        forced = self.forced(real, counts)
        s = scores.float().masked_fill(~valid, float("-inf"))
        s = s.masked_fill(forced[:, None, :], float("inf"))
        s = self._whole_scores(s, real)
        if self.policy.head_adaptive and s.shape[1] > 1:
            keep = self._select_heads(s, counts, forced) & valid
        else:
            keep = (ranked_keep(s, counts[:, None]) | forced[:, None, :]) & valid
        return self._whole_keep(keep, real)

    def _span_ids(self, real: torch.Tensor) -> torch.Tensor:
        """(B, T) index of the ``whole`` span each token is in, -1 outside every span."""
        starts = torch.tensor([a for a, _ in sorted(self.whole)], device=real.device)
        ends = torch.tensor([b for _, b in sorted(self.whole)], device=real.device)
        rank = real.long().cumsum(-1) - 1
        idx = torch.searchsorted(starts, rank, right=True) - 1
        inside = real & (idx >= 0) & (rank < ends[idx.clamp_min(0)])
        return torch.where(inside, idx, -1)

    def _whole_scores(self, s: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Every token of a whole span gets the span's best score (ties: earlier first)."""
        if not self.whole:
            return s
        ids = (self._span_ids(real) + 1)[:, None, :].expand_as(s)      # 0 = no span
        best = torch.full((*s.shape[:2], len(self.whole) + 1), float("-inf"), device=s.device)
        best = best.scatter_reduce(-1, ids, s, reduce="amax")
        return torch.where(ids > 0, torch.gather(best, -1, ids), s)

    def _whole_keep(self, keep: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """A span the budget cut in two is dropped whole."""
        if not self.whole:
            return keep
        ids = (self._span_ids(real) + 1)[:, None, :].expand_as(keep)
        zeros = torch.zeros((*keep.shape[:2], len(self.whole) + 1), device=keep.device)
        kept = zeros.scatter_add(-1, ids, keep.float())
        size = zeros.scatter_add(-1, ids, torch.ones_like(keep, dtype=torch.float32))
        cut = (kept > 0) & (kept < size)
        cut[..., 0] = False
        return keep & ~torch.gather(cut, -1, ids)

    def _select_heads(self, s: torch.Tensor, counts: torch.Tensor, forced: torch.Tensor):
        """AdaKV: a floor per head, then the rest of the layer's pool by score over heads."""
        b, h, t = s.shape
        floor = torch.ceil(counts.double() * self.policy.floor).long()
        keep = ranked_keep(s, floor[:, None]) | forced[:, None, :]
        rest = (counts * h - keep.sum((1, 2))).clamp_min(0)
        flat = s.masked_fill(keep, float("-inf")).reshape(b, h * t)
        keep |= ranked_keep(flat, rest).reshape(b, h, t) & torch.isfinite(s)
        return keep

    def allocate_layers(self, informativeness: dict[int, torch.Tensor],
                        n_real: torch.Tensor) -> dict[int, torch.Tensor]:
        """Split one pool (ratio x tokens x layers) across layers by informativeness (B,)."""
        layers = sorted(informativeness)
        out = {i: torch.zeros_like(n_real) for i in layers}
        for row in range(n_real.shape[0]):
            n = int(n_real[row])
            total = int(round(n * (1 - self.ratio))) * len(layers)
            w = np.array([float(informativeness[i][row]) for i in layers])
            floor = min(n, self.sinks + self.recent)
            alloc = split_pool(total - floor * len(layers), w,
                               caps=np.full(len(layers), n - floor)) + floor
            for i, a in zip(layers, alloc, strict=True):
                out[i][row] = int(a)
        return out
