"""Which items to keep given scores and a budget. Every selector returns a boolean mask in
the items' original order, so the order of kept items is always preserved."""

from __future__ import annotations

import numpy as np

from ..errors import BudgetError


def _order(scores: np.ndarray) -> np.ndarray:
    """Indices from highest to lowest score; ties keep the earlier item first."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def select_top_k(scores: np.ndarray, k: int, forced: np.ndarray | None = None) -> np.ndarray:
    """Keep the ``k`` highest-scoring items, forced items first (and always)."""
    n = len(scores)
    keep = np.zeros(n, dtype=bool) if forced is None else np.asarray(forced, dtype=bool).copy()
    room = k - int(keep.sum())
    if room > 0:
        free = [i for i in _order(scores) if not keep[i]]
        keep[free[:room]] = True
    return keep


def select_threshold(scores: np.ndarray, threshold: float, forced=None) -> np.ndarray:
    """Keep items whose score is at least ``threshold`` (and forced items)."""
    keep = np.asarray(scores) >= threshold
    return keep | (np.asarray(forced, dtype=bool) if forced is not None else False)


def select_under_budget(
    scores: np.ndarray,
    costs: np.ndarray,
    capacity: float,
    forced: np.ndarray | None = None,
    *,
    allow_forced_overflow: bool = False,
) -> np.ndarray:
    """Greedy cost-aware selection: forced items are charged first, then items in
    decreasing score order are kept whenever their cost still fits in ``capacity``.

    Raises :class:`BudgetError` when the forced items alone cost more than ``capacity``,
    unless ``allow_forced_overflow`` (then only the forced items are kept).
    """
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if scores.shape != costs.shape:
        raise ValueError("scores and costs must have the same shape")
    keep = np.zeros(len(scores), dtype=bool) if forced is None else np.asarray(forced, bool).copy()
    used = float(costs[keep].sum())
    if used > capacity:
        if allow_forced_overflow:
            return keep
        raise BudgetError(
            f"protected items alone need {used:g} but the budget is {capacity:g} "
            f"(over by {used - capacity:g})"
        )
    for i in _order(scores):
        if keep[i]:
            continue
        if used + costs[i] <= capacity:
            keep[i] = True
            used += costs[i]
    return keep
