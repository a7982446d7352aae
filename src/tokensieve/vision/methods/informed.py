"""tokensieve's own method: keep the informative patches, merge the rest into them.

Informative = attended by the CLS token (the summary the encoder builds); nothing is lost
outright: every other patch joins the kept patch whose key it resembles most, size-weighted,
and later layers weigh merged tokens by their size (proportional attention). Without a CLS
token the key norm ranks patches instead.
"""

from __future__ import annotations

from .base import (
    Assignment,
    Step,
    VisionMethod,
    keep_mask_to_assignment,
    merge_into_nearest,
    top_k_mask,
)


class InformedMerge(VisionMethod):
    name = "informed"
    needs = frozenset({"cls_attn", "keys"})
    proportional = True

    def __init__(self, merge: bool = True):
        self.merge = bool(merge)

    def assign(self, step: Step) -> Assignment:
        score = step.cls_attn if step.cls_attn is not None else step.keys.float().norm(dim=-1)
        keep = top_k_mask(score.float(), step.n_keep)
        if not self.merge:
            return keep_mask_to_assignment(keep)
        return merge_into_nearest(keep, step.keys)
