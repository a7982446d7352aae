"""The engine every place shares: Scorer -> Budget -> Selector -> Action.

``Budget`` says how many items to keep (``keep`` fraction or exact ``count``; a fraction
becomes a count by ``keep_count``, the one rounding rule),
``split_pool`` splits one pool across segments / layers, ``select_top_k`` (numpy or batched
torch, forced items first) and ``select_under_budget`` (cost-aware) choose which, ranking
scores rounded by ``quantise`` (ties by position; ``ranked`` gives that order).
"""

from .budget import Budget, keep_count, split_pool
from .select import quantise, ranked, select_top_k, select_under_budget

__all__ = ["Budget", "keep_count", "quantise", "ranked", "select_top_k", "select_under_budget",
           "split_pool"]
