"""Which items to keep given scores and a budget. Every selector returns a boolean mask in
the items' original order, so the order of kept items is always preserved.

``select_top_k`` works on numpy arrays and on torch tensors of any batch shape (rows of
prompt units, or (batch, heads, entries) of a KV cache), with one count per row and forced
items charged first. ``select_under_budget`` is the cost-aware variant (units of different
token cost, as in prompt compression).

Every selector ranks scores rounded by :func:`quantise` and breaks ties by position.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BudgetError

# Scores are ranked at 16 significant bits (float32 has 24, bfloat16 8): two float32 results
# of the same sum taken in another order (threads, kernels, batch shapes) differ in their
# last few bits, 2**-8 of the 2**-16 (1.5e-5 relative) step, so equal scores stay equal
# (and tie by position) unless they straddle a step; scores a bfloat16 model can tell apart
# (2**-8) stay apart. Noise still moves a score across a step now and then: selection is
# only as reproducible as the scores.
SIGNIFICANT_BITS = 16


def quantise(scores):
    """``scores`` rounded to :data:`SIGNIFICANT_BITS` significant bits (half away from zero;
    inf and NaN stay as they are). numpy in -> float64 numpy; torch in -> float64 for a
    float64 tensor, else float32 (exact: 16 bits fit), on the same device."""
    if torch.is_tensor(scores):
        wide = scores.dtype == torch.float64
        s = scores.double() if wide else scores.float()
        bits, ints = (53, torch.int64) if wide else (24, torch.int32)
    else:
        s = np.array(scores, dtype=np.float64)
        bits, ints = 53, np.int64
    drop = bits - SIGNIFICANT_BITS
    i = s.view(ints)
    # sign and magnitude: rounding the magnitude's low bits carries into the exponent as
    # it should (the largest finite values round to inf, never into the sign bit)
    out = ((i + (1 << (drop - 1))) & ~((1 << drop) - 1)).view(s.dtype)
    return torch.where(s.isnan(), s, out) if torch.is_tensor(s) else np.where(np.isnan(s), s, out)


def ranked(scores) -> np.ndarray:
    """Indices of ``scores`` (1-D numpy) from best to worst by their :func:`quantise` value,
    equal values in input order. NaN ranks last."""
    return np.argsort(-quantise(scores), kind="stable")


def select_top_k(scores, k, forced=None, *, prefer: str = "early"):
    """Keep the ``k`` highest scores along the last axis, forced items first and always.

    ``scores`` (..., n) numpy or torch; ``k`` an int or one count per row (broadcastable to
    ``scores.shape[:-1]``); ``forced`` a boolean mask broadcastable to ``scores``. Forced
    items take their places in the count first; when more items are forced than ``k``, all
    forced items are kept and nothing else. Scores are compared as :func:`quantise` rounds
    them; ties keep the earlier item (``prefer="late"``: the later one, e.g. the newer cache
    entry). NaN ranks below every number. Returns a
    boolean mask of the same kind (numpy or torch) and shape as ``scores``.
    """
    if prefer not in ("early", "late"):
        raise ValueError("prefer is 'early' or 'late'")
    as_numpy = not torch.is_tensor(scores)
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64)) if as_numpy else scores
    s = quantise(torch.nan_to_num(s.double() if s.dtype == torch.float64 else s.float(),
                                  nan=float("-inf")))
    f = None
    if forced is not None:
        f = torch.as_tensor(np.asarray(forced, dtype=bool)) if as_numpy else forced
        f = f.to(device=s.device, dtype=torch.bool).expand_as(s)
        s = s.masked_fill(f, float("inf"))
    counts = torch.as_tensor(k, device=s.device).long().clamp_min(0)
    if counts.dim() == 0:
        counts = counts.expand(s.shape[:-1])
    n = s.shape[-1]
    if prefer == "late":
        s = s.flip(-1)
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n, device=s.device).expand_as(order).contiguous())
    keep = ranks < counts[..., None]
    if prefer == "late":
        keep = keep.flip(-1)
    if f is not None:
        keep |= f
    return keep.cpu().numpy() if as_numpy else keep


def select_under_budget(
    scores: np.ndarray,
    costs: np.ndarray,
    capacity: float,
    forced: np.ndarray | None = None,
    *,
    allow_forced_overflow: bool = False,
) -> np.ndarray:
    """Greedy cost-aware selection: forced items are charged first, then items in
    decreasing score order (:func:`ranked`: quantised, ties by position) are kept whenever
    their cost still fits in ``capacity``.

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
    for i in ranked(scores):
        if keep[i]:
            continue
        if used + costs[i] <= capacity:
            keep[i] = True
            used += costs[i]
    return keep
