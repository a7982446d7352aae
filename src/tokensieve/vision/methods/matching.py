"""Merging by similarity: ToMe (bipartite soft matching) and PiToMe (energy-guided)."""

from __future__ import annotations

import torch

from ...engine.merge import combine
from ...engine.select import quantise
from .base import Assignment, Step, VisionMethod, compose, normalized


def bipartite_round(metric: torch.Tensor, r: int, a_idx: torch.Tensor, b_idx: torch.Tensor):
    """Merge the ``r`` tokens of set A (``a_idx`` (B, A)) that best match a token of set B
    (``b_idx`` (B, Bn)) into that token. Returns slots (B, N): survivors numbered in order."""
    bsz, n, d = metric.shape
    m = normalized(metric)
    a = torch.gather(m, 1, a_idx[..., None].expand(-1, -1, d))
    bb = torch.gather(m, 1, b_idx[..., None].expand(-1, -1, d))
    score = quantise(a @ bb.transpose(1, 2))                         # (B, A, Bn)
    best, match = score.max(-1)  # ties: the first B token
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged_a = torch.zeros_like(best, dtype=torch.bool).scatter_(1, order[:, :r], True)
    survive = torch.ones(bsz, n, dtype=torch.bool, device=metric.device)
    survive.scatter_(1, a_idx, ~merged_a)
    own = torch.where(survive, survive.long().cumsum(-1) - 1, -1)
    target = torch.gather(b_idx, 1, match)                            # (B, A) token index in B
    into = torch.gather(own, 1, target)
    slot = own.clone()
    slot.scatter_(1, a_idx, torch.where(merged_a, into, torch.gather(own, 1, a_idx)))
    return slot, n - r


def _alternate(n: int, bsz: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(n, device=device)
    return idx[0::2].expand(bsz, -1), idx[1::2].expand(bsz, -1)


def _rounds(step: Step, plan_round) -> Assignment:
    """Repeat merge rounds (each at most halves the tokens) until ``n_keep`` remain,
    re-averaging the metric of merged tokens (size-weighted) between rounds."""
    metric, sizes = step.keys.float(), step.sizes.float()
    total = None
    n = step.n
    while n > step.n_keep:
        r = min(n - step.n_keep, n // 2)
        a_idx, b_idx = plan_round(metric, sizes, r)
        slot, n_out = bipartite_round(metric, r, a_idx, b_idx)
        metric, sizes = combine(metric, slot, n_out, sizes)
        total = slot if total is None else compose(total, slot)
        n = n_out
    if total is None:
        total = torch.arange(step.n, device=step.x.device).expand(step.x.shape[0], -1)
    return Assignment(total, n)


class ToMe(VisionMethod):
    """ToMe: split tokens alternately into A and B, merge the ``r`` A tokens most similar
    (keys, cosine) to a B token into it; size-weighted means, proportional attention."""

    name = "tome"
    needs = frozenset({"keys"})
    proportional = True

    def assign(self, step: Step) -> Assignment:
        def plan(metric, sizes, r):
            return _alternate(metric.shape[1], metric.shape[0], metric.device)
        return _rounds(step, plan)


class PiToMe(VisionMethod):
    """PiToMe: an energy score (how crowded each token's neighbourhood is) picks the merge
    candidates; isolated, informative tokens (low energy) are protected from merging."""

    name = "pitome"
    needs = frozenset({"keys"})
    proportional = True

    def __init__(self, margin: float | None = None, alpha: float = 1.0):
        self.margin, self.alpha = margin, float(alpha)

    def energy(self, metric: torch.Tensor, margin: float) -> torch.Tensor:
        m = normalized(metric)
        sim = m @ m.transpose(1, 2)
        soft = torch.where(sim > margin, sim, self.alpha * (torch.exp(sim - margin) - 1))
        return soft.mean(-1)

    def assign(self, step: Step) -> Assignment:
        margin = (self.margin if self.margin is not None
                  else 0.9 - 0.9 * (step.layer + 1) / step.num_layers)

        def plan(metric, sizes, r):
            e = self.energy(metric, margin)
            order = quantise(e).argsort(dim=-1, descending=True, stable=True)[:, : 2 * r]  # crowded
            return order[:, 0::2], order[:, 1::2]
        return _rounds(step, plan)
