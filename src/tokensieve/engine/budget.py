"""How many items to keep: a ratio, an exact count, or a score threshold."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class Budget:
    """A keep-budget. Exactly one of ``ratio`` (fraction kept, in (0, 1]), ``count``
    (items or tokens kept, > 0) or ``threshold`` (keep scores >= it) is set."""

    ratio: float | None = None
    count: int | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        given = [v is not None for v in (self.ratio, self.count, self.threshold)]
        if sum(given) != 1:
            raise UsageError("Give exactly one budget: a ratio, a target count or a threshold.")
        if self.ratio is not None:
            r = self.ratio
            bad_type = isinstance(r, bool) or not isinstance(r, numbers.Real)  # np.float32 too
            if bad_type or math.isnan(r) or not 0 < r <= 1:
                raise UsageError(
                    f"ratio must be a fraction of tokens to keep in (0, 1], got {r!r}; "
                    "e.g. 0.33 keeps a third."
                )
        if self.count is not None:
            c = self.count
            if isinstance(c, bool) or not isinstance(c, int | np.integer) or c <= 0:
                raise UsageError(f"target must be a positive whole number of tokens, got {c!r}.")

    @classmethod
    def from_options(cls, ratio: float | None, target: int | None, default_ratio: float = 0.5):
        """Budget from user options; neither means ``default_ratio``."""
        if ratio is not None and target is not None:
            raise UsageError("Give either a ratio or a target token count, not both.")
        if ratio is None and target is None:
            return cls(ratio=default_ratio)
        return cls(ratio=ratio) if ratio is not None else cls(count=target)

    def target(self, total: int) -> int:
        """Items to keep out of ``total`` (never more than ``total``; ratio rounds down)."""
        if self.count is not None:
            return min(int(self.count), total)
        if self.ratio is not None:
            return min(total, int(math.floor(self.ratio * total + 1e-9)))
        raise UsageError("A threshold budget has no target count; use select_threshold.")


def split_pool(total: int, weights: np.ndarray, caps: np.ndarray | None = None) -> np.ndarray:
    """Split one global pool of ``total`` items across segments in proportion to
    ``weights`` (largest remainders), never giving a segment more than its cap."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0, None)
    n = len(w)
    # uncapped: no segment can get more than the whole pool (an int64-max cap would overflow
    # caps.sum() and hand out nothing)
    caps = np.full(n, max(int(total), 0)) if caps is None else np.asarray(caps, dtype=np.int64)
    alloc = np.zeros(n, dtype=np.int64)
    remaining = min(int(total), int(caps.sum()))
    active = caps > 0
    while remaining > 0 and active.any():
        ww = np.where(active, w, 0.0)
        ww = np.where(active, 1.0, 0.0) if ww.sum() <= 0 else ww
        share = ww / ww.sum() * remaining
        give = np.minimum(np.floor(share).astype(np.int64), caps - alloc)
        left = remaining - int(give.sum())
        if left > 0:  # largest remainders, among segments with room
            room = (caps - alloc - give) > 0
            order = np.argsort(-(share - np.floor(share)) - room * 10, kind="stable")
            for j in order[:left]:
                if room[j]:
                    give[j] += 1
        if give.sum() == 0:
            break
        alloc += give
        remaining -= int(give.sum())
        active = alloc < caps
    return alloc
