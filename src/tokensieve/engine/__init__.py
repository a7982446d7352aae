"""The engine every place shares: Scorer -> Budget -> Selector -> Action.

``Budget`` says how many items to keep (``keep`` fraction or exact ``count``; a fraction
becomes a count by ``keep_count``, the one rounding rule),
``split_pool`` splits one pool across segments / layers, ``select_top_k`` (numpy or batched
torch, forced items first) and ``select_under_budget`` (cost-aware) choose which.
"""

from .budget import Budget, keep_count, split_pool
from .select import select_top_k, select_under_budget

__all__ = ["Budget", "keep_count", "select_top_k", "select_under_budget", "split_pool"]
