"""tokensieve's own method: keep the informative patches, merge the redundant ones.

Informative = attended by the CLS token (the summary the encoder builds); those tokens are
protected. Nothing is dropped outright: the other patches are merged, size-weighted, and
later layers weigh merged tokens by their size (proportional attention).

``mode="match"`` (the default, chosen on the dev split): a share ``protect`` of the budget
is taken by CLS attention and never merged away; then, in rounds, the most redundant
unprotected tokens (highest similarity to any other token, taken alternately so that a token
and its twin are split) merge into their most similar remaining token, until the budget is
met. ``mode="nearest"``: the kept set is the top of the CLS attention and every other patch
joins the kept patch whose key it resembles most. Without a CLS token the key norm ranks
patches instead.
"""

from __future__ import annotations

import torch

from ...engine.budget import keep_count
from ...engine.merge import combine
from ...engine.select import quantise
from ...errors import UsageError
from .base import (
    Assignment,
    Step,
    VisionMethod,
    compose,
    keep_mask_to_assignment,
    merge_into_nearest,
    normalized,
    top_k_mask,
)
from .matching import bipartite_round


class InformedMerge(VisionMethod):
    name = "informed"
    needs = frozenset({"cls_attn", "keys"})
    proportional = True

    def __init__(self, merge: bool = True, mode: str = "match", protect: float = 0.25):
        if mode not in ("nearest", "match"):
            raise UsageError(f"informed: mode is 'nearest' or 'match', got {mode!r}.")
        if not 0 <= float(protect) <= 1:
            raise UsageError("informed: protect is a share of the budget in [0, 1], "
                             f"got {protect!r}.")
        self.merge, self.mode, self.protect = bool(merge), mode, float(protect)

    def assign(self, step: Step) -> Assignment:
        score = step.cls_attn if step.cls_attn is not None else step.keys.float().norm(dim=-1)
        if self.mode == "match" and self.merge:
            return self._match(step, score.float())
        keep = top_k_mask(score.float(), step.n_keep)
        if not self.merge:
            return keep_mask_to_assignment(keep)
        return merge_into_nearest(keep, step.keys)

    def _match(self, step: Step, score: torch.Tensor) -> Assignment:
        metric, sizes = step.keys.float(), step.sizes.float()
        protected = top_k_mask(score, keep_count(self.protect, step.n_keep))
        total, n = None, step.n
        while n > step.n_keep:
            r = min(n - step.n_keep, n // 2)
            m = normalized(metric)
            sim = m @ m.transpose(1, 2)
            sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
            # most redundant first; a token and its best match have the same redundancy,
            # so they sit side by side and alternating sends one to A, the other to B
            redundancy = sim.amax(-1).masked_fill(protected, float("-inf"))
            order = quantise(redundancy).argsort(dim=-1, descending=True, stable=True)
            free = int((~protected).sum(-1).min())
            r = min(r, (free + 1) // 2)
            in_a = torch.zeros_like(protected).scatter_(1, order[:, 0:2 * r:2], True)
            a_idx = in_a.nonzero()[:, 1].view(-1, r)
            b_idx = (~in_a).nonzero()[:, 1].view(-1, n - r)
            slot, n_out = bipartite_round(metric, r, a_idx, b_idx)
            metric, sizes = combine(metric, slot, n_out, sizes)
            flag = torch.zeros(slot.shape[0], n_out, device=slot.device)
            protected = flag.scatter_reduce(1, slot, protected.float(), reduce="amax") > 0
            total = slot if total is None else compose(total, slot)
            n = n_out
        if total is None:
            total = torch.arange(step.n, device=step.x.device).expand(step.x.shape[0], -1)
        return Assignment(total, n)
