"""Methods that keep a diverse set: DART (duplication to pivots) and ToDRE (k-center)."""

from __future__ import annotations

import torch

from ...engine.select import quantise
from .base import Assignment, Step, VisionMethod, keep_mask_to_assignment, normalized, top_k_mask


class DART(VisionMethod):
    """DART: a few pivot tokens (largest key norm); keep the pivots and the tokens least
    duplicated by them (lowest maximum cosine similarity to any pivot)."""

    name = "dart"
    needs = frozenset({"keys"})

    def __init__(self, pivots: int = 8):
        self.pivots = int(pivots)

    def assign(self, step: Step) -> Assignment:
        k = step.keys.float()
        b, n, _ = k.shape
        p = max(1, min(self.pivots, step.n_keep))
        pivot = top_k_mask(k.norm(dim=-1), p).nonzero()[:, 1].view(b, p)   # (B, P)
        m = normalized(k)
        piv = torch.gather(m, 1, pivot[..., None].expand(-1, -1, m.shape[-1]))
        dup = (m @ piv.transpose(1, 2)).amax(-1)                            # (B, N)
        dup = dup.scatter(1, pivot, float("-inf"))                          # pivots first
        return keep_mask_to_assignment(top_k_mask(-dup, step.n_keep))


class ToDRE(VisionMethod):
    """ToDRE: greedy k-center on the token features (cosine distance), starting from the
    token the CLS attends to most (or the largest-norm token without a CLS)."""

    name = "todre"
    needs = frozenset({"cls_attn"})

    def assign(self, step: Step) -> Assignment:
        m = normalized(step.x)
        b, n, _ = m.shape
        start = (step.cls_attn if step.cls_attn is not None else step.x.float().norm(dim=-1))
        first = quantise(start).argmax(-1)                                  # (B,)
        keep = torch.zeros(b, n, dtype=torch.bool, device=m.device)
        rows = torch.arange(b, device=m.device)
        keep[rows, first] = True
        dist = 1 - (m @ m[rows, first][..., None]).squeeze(-1)              # (B, N)
        for _ in range(step.n_keep - 1):
            nxt = quantise(dist.masked_fill(keep, float("-inf"))).argmax(-1)
            keep[rows, nxt] = True
            dist = torch.minimum(dist, 1 - (m @ m[rows, nxt][..., None]).squeeze(-1))
        return keep_mask_to_assignment(keep)
