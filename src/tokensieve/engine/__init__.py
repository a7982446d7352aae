"""The engine every place shares: Scorer -> Budget -> Selector -> Action."""

from .budget import Budget
from .merge import drop, merge_weighted
from .select import select_threshold, select_top_k, select_under_budget

__all__ = [
    "Budget",
    "drop",
    "merge_weighted",
    "select_threshold",
    "select_top_k",
    "select_under_budget",
]
