"""How many items to keep: a fraction (``keep``) or an exact count, the one rule that turns
a fraction into a count (:func:`keep_count`), and how to split one pool of items across
segments."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


def check_keep(keep, name: str = "keep") -> float:
    """``keep`` as a float in (0, 1], or a :class:`UsageError` naming the problem."""
    bad_type = isinstance(keep, bool) or not isinstance(keep, numbers.Real)  # np.float32 too
    if bad_type or math.isnan(keep) or not 0 < keep <= 1:
        raise UsageError(
            f"{name} is the fraction of tokens to keep and must be in (0, 1], got {keep!r}; "
            "e.g. 0.25 keeps a quarter, 1.0 keeps everything."
        )
    return float(keep)


def keep_count(keep, total: int) -> int:
    """Items kept out of ``total`` for the fraction ``keep`` (in [0, 1]): the one rounding
    rule of every place (text, kv, vision). ``floor(keep x total)``, so the fraction is never
    exceeded (keep 0.5 of 7 keeps 3), with 1e-9 of slack for float noise (0.29 of 100 keeps
    29, not 28); but at least 1 when ``keep`` > 0 and ``total`` > 0."""
    total, keep = int(total), float(keep)
    if keep <= 0 or total <= 0:
        return 0
    return min(total, max(1, math.floor(keep * total + 1e-9)))


@dataclass(frozen=True)
class Budget:
    """A keep-budget: exactly one of ``keep`` (the fraction kept, in (0, 1]; the same word
    means the same thing in every place of the library) or ``count`` (items kept, > 0)."""

    keep: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.count is None):
            raise UsageError("Give exactly one budget: keep (a fraction) or a target count.")
        if self.keep is not None:
            check_keep(self.keep)
        if self.count is not None:
            c = self.count
            if isinstance(c, bool) or not isinstance(c, int | np.integer) or c <= 0:
                raise UsageError(f"target must be a positive whole number of tokens, got {c!r}.")

    @classmethod
    def from_options(cls, keep: float | None, target: int | None, default_keep: float = 0.5):
        """Budget from user options; neither means ``default_keep``."""
        if keep is not None and target is not None:
            raise UsageError("Give either keep (a fraction) or a target token count, not both.")
        if keep is None and target is None:
            return cls(keep=default_keep)
        return cls(keep=keep) if keep is not None else cls(count=target)

    def target(self, total: int) -> int:
        """Items to keep out of ``total`` (never more than ``total``; a fraction as
        :func:`keep_count` rounds it)."""
        if self.count is not None:
            return min(int(self.count), total)
        return keep_count(self.keep, total)


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
