"""Methods that keep a diverse set: DART (duplication to pivots) and ToDRE (k-center)."""

from __future__ import annotations

from ...engine.diversity import duplication, k_center
from ...engine.select import quantise
from .base import Assignment, Step, VisionMethod, keep_mask_to_assignment, top_k_mask


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
        return keep_mask_to_assignment(top_k_mask(-duplication(k, pivot), step.n_keep))


class ToDRE(VisionMethod):
    """ToDRE: greedy k-center on the token features (cosine distance), starting from the
    token the CLS attends to most (or the largest-norm token without a CLS)."""

    name = "todre"
    needs = frozenset({"cls_attn"})

    def assign(self, step: Step) -> Assignment:
        start = (step.cls_attn if step.cls_attn is not None else step.x.float().norm(dim=-1))
        first = quantise(start).argmax(-1)                                  # (B,)
        return keep_mask_to_assignment(k_center(step.x, step.n_keep, first))
