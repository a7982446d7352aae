"""The engine: Budget, pool splitting, selectors and the drop / merge actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tokensieve.engine import Budget, select_top_k, select_under_budget
from tokensieve.engine.budget import split_pool
from tokensieve.engine.select import quantise
from tokensieve.errors import BudgetError, UsageError

# ---------------------------------------------------------------- Budget


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, -1, 1.0000001, 1.5, 2, float("nan"),
                                   float("inf"), -float("inf"), True, False, "0.5",
                                   complex(0.5, 0), np.bool_(True)])
def test_budget_rejects_bad_ratios(ratio):
    with pytest.raises(UsageError, match="keep is the fraction"):
        Budget(keep=ratio)


@pytest.mark.parametrize("ratio", [1e-9, 0.01, 0.33, 0.5, 1, 1.0, np.float64(0.25),
                                   np.float32(0.25)])
def test_budget_accepts_ratios_in_zero_one(ratio):
    assert Budget(keep=ratio).keep == ratio


@pytest.mark.parametrize("count", [0, -1, -3, 2.5, 3.0, "3", True, False, float("nan")])
def test_budget_rejects_bad_counts(count):
    with pytest.raises(UsageError, match="positive whole number"):
        Budget(count=count)


@pytest.mark.parametrize("count", [1, 7, np.int64(5), np.int32(2)])
def test_budget_accepts_positive_counts(count):
    assert Budget(count=count).target(100) == int(count)


def test_budget_needs_exactly_one_kind():
    with pytest.raises(UsageError, match="exactly one budget"):
        Budget()
    with pytest.raises(UsageError, match="exactly one budget"):
        Budget(keep=0.5, count=3)


def test_budget_from_options():
    with pytest.raises(UsageError, match="not both"):
        Budget.from_options(0.5, 10)
    assert Budget.from_options(None, None) == Budget(keep=0.5)
    assert Budget.from_options(None, None, default_keep=0.3) == Budget(keep=0.3)
    assert Budget.from_options(0.2, None) == Budget(keep=0.2)
    assert Budget.from_options(None, 9) == Budget(count=9)
    with pytest.raises(UsageError):
        Budget.from_options(0, None)
    with pytest.raises(UsageError):
        Budget.from_options(None, 0)


def test_budget_target_rounds_down_and_caps():
    assert Budget(keep=0.5).target(11) == 5
    assert Budget(keep=0.29).target(100) == 29  # not 28 from float noise
    assert Budget(keep=0.5).target(7) == 3  # kv and vision count the same (keep_count)
    assert Budget(keep=0.1).target(9) == 1  # at least one item
    assert Budget(keep=0.1).target(0) == 0
    assert Budget(keep=1).target(7) == 7
    assert Budget(count=50).target(7) == 7
    assert Budget(count=3).target(0) == 0


@given(ratio=st.floats(1e-6, 1.0), total=st.integers(0, 10**6))
def test_budget_target_property(ratio, total):
    t = Budget(keep=ratio).target(total)
    assert 0 <= t <= total
    assert t <= max(1, ratio * total + 1e-6)
    assert t > ratio * total - 1
    assert (t >= 1) == (total >= 1)


# ---------------------------------------------------------------- split_pool


def test_split_pool_proportional():
    assert split_pool(10, np.array([1, 1])).tolist() == [5, 5]
    assert split_pool(10, np.array([3, 1])).tolist() == [8, 2] or \
        split_pool(10, np.array([3, 1])).tolist() == [7, 3]
    assert split_pool(6, np.array([1, 2, 3])).tolist() == [1, 2, 3]
    assert split_pool(0, np.array([1, 2])).tolist() == [0, 0]


def test_split_pool_caps_and_redistribution():
    # the capped segment gives its share to the others
    assert split_pool(10, np.array([1, 1, 1]), caps=np.array([1, 100, 100])).tolist()[0] == 1
    assert split_pool(10, np.array([1, 1, 1]), caps=np.array([1, 100, 100])).sum() == 10
    # more than fits: everyone at their cap
    assert split_pool(100, np.array([1, 2]), caps=np.array([3, 4])).tolist() == [3, 4]
    # a zero cap gets nothing
    assert split_pool(5, np.array([1, 1]), caps=np.array([0, 10])).tolist() == [0, 5]


def test_split_pool_zero_weights_split_evenly():
    assert split_pool(4, np.zeros(4)).tolist() == [1, 1, 1, 1]
    # negative weights count as zero
    assert split_pool(4, np.array([-1.0, 1.0])).tolist() == [0, 4]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 8), total=st.integers(0, 200))
def test_split_pool_property(data, n, total):
    weights = data.draw(hnp.arrays(np.float64, n, elements=st.floats(0, 100)))
    capped = data.draw(st.booleans())
    caps = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 60))) if capped else None
    alloc = split_pool(total, weights, caps)
    assert alloc.shape == (n,) and (alloc >= 0).all()
    cap_sum = int(caps.sum()) if capped else total
    assert alloc.sum() == min(total, cap_sum)
    if capped:
        assert (alloc <= caps).all()
    elif weights.sum() > 0:
        # largest remainders: within one of the exact proportional share
        exact = weights / weights.sum() * total
        assert np.all(np.abs(alloc - exact) < 1 + 1e-9)


# ---------------------------------------------------------------- selectors


def test_select_under_budget_charges_forced_first():
    scores = np.array([5.0, 4.0, 3.0, 0.0])
    costs = np.array([2.0, 2.0, 2.0, 3.0])
    forced = np.array([False, False, False, True])
    keep = select_under_budget(scores, costs, 5, forced)
    # the forced item (cost 3) is paid first, leaving room for the best item only
    assert keep.tolist() == [True, False, False, True]


def test_select_under_budget_skips_items_that_do_not_fit():
    keep = select_under_budget(np.array([9.0, 8.0, 1.0]), np.array([4.0, 3.0, 1.0]), 5)
    assert keep.tolist() == [True, False, True]


def test_select_under_budget_forced_overflow():
    scores = np.array([1.0, 2.0, 3.0])
    costs = np.array([3.0, 3.0, 1.0])
    forced = np.array([True, True, False])
    with pytest.raises(BudgetError, match="over by 1"):
        select_under_budget(scores, costs, 5, forced)
    keep = select_under_budget(scores, costs, 5, forced, allow_forced_overflow=True)
    assert keep.tolist() == [True, True, False]


def test_select_under_budget_shape_mismatch():
    with pytest.raises(ValueError):
        select_under_budget(np.zeros(3), np.zeros(2), 1)


def test_select_under_budget_empty_and_zero_capacity():
    assert select_under_budget(np.zeros(0), np.zeros(0), 3).tolist() == []
    assert not select_under_budget(np.ones(3), np.ones(3), 0).any()


def test_select_under_budget_does_not_mutate_forced():
    forced = np.array([True, False, False])
    select_under_budget(np.ones(3), np.ones(3), 3, forced)
    assert forced.tolist() == [True, False, False]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 30), capacity=st.floats(0, 60))
def test_select_under_budget_property(data, n, capacity):
    scores = data.draw(hnp.arrays(np.float64, n, elements=st.floats(-5, 5)))
    # whole-number costs, so sums are exact and the greedy checks need no tolerance
    costs = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 10))).astype(np.float64)
    forced = data.draw(hnp.arrays(bool, n))
    forced_cost = float(costs[forced].sum())
    if forced_cost > capacity:
        with pytest.raises(BudgetError):
            select_under_budget(scores, costs, capacity, forced)
        keep = select_under_budget(scores, costs, capacity, forced, allow_forced_overflow=True)
        assert (keep == forced).all()
        return
    keep = select_under_budget(scores, costs, capacity, forced)
    assert keep.dtype == bool and keep.shape == (n,)
    assert (keep | ~forced).all()  # forced items are always kept
    used = float(costs[keep].sum())
    assert used <= capacity + 1e-9  # never over capacity
    # greedy: an item left out did not fit when its turn came, and never fits later
    for i in np.flatnonzero(~keep):
        assert used + costs[i] > capacity - 1e-9
    # among free items of equal cost, a higher score is never dropped for a lower one
    for i in np.flatnonzero(keep & ~forced):
        for j in np.flatnonzero(~keep):
            if costs[j] <= costs[i]:
                assert scores[j] <= scores[i]


def test_select_top_k():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert select_top_k(scores, 2).tolist() == [False, True, False, True]
    assert select_top_k(scores, 0).tolist() == [False] * 4
    assert select_top_k(scores, 10).tolist() == [True] * 4
    forced = np.array([True, False, False, False])
    assert select_top_k(scores, 2, forced).tolist() == [True, True, False, False]
    # more forced than k: forced items are still all kept, nothing else
    assert select_top_k(scores, 1, np.array([True, False, True, False])).tolist() == \
        [True, False, True, False]
    # ties keep the earlier item
    assert select_top_k(np.array([1.0, 1.0, 1.0]), 2).tolist() == [True, True, False]


@given(scores=hnp.arrays(np.float64, st.integers(0, 30), elements=st.floats(-10, 10)),
       k=st.integers(-2, 40))
@example(scores=np.array([-2.2e-313, 0.0]), k=1)  # a subnormal rounds to -0.0 == 0.0: a tie
def test_select_top_k_property(scores, k):
    keep = select_top_k(scores, k)
    assert keep.sum() == min(max(k, 0), len(scores))
    if keep.any() and (~keep).any():  # the contract holds for the scores as quantise ranks them
        q = quantise(scores)
        assert q[keep].min() >= q[~keep].max()
        ties = np.flatnonzero(q == q[keep].min())
        assert keep[ties].tolist() == sorted(keep[ties].tolist(), reverse=True)  # earlier first


def test_select_top_k_batched_torch_rows_and_forced():
    scores = torch.tensor([[[0.1, 0.9, 0.5, 0.7]], [[0.4, 0.3, 0.2, 0.1]]])   # (2, 1, 4)
    counts = torch.tensor([[2], [1]])
    forced = torch.tensor([[[False, False, True, False]], [[False, False, False, True]]])
    keep = select_top_k(scores, counts, forced)
    assert torch.is_tensor(keep)
    assert keep.tolist() == [[[False, True, True, False]], [[False, False, False, True]]]


def test_select_top_k_ties_prefer_late_and_nan_last():
    assert select_top_k(np.ones(4), 2, prefer="late").tolist() == [False, False, True, True]
    assert select_top_k(np.array([np.nan, 0.0, -1.0]), 2).tolist() == [False, True, True]
    assert select_top_k(torch.tensor([1.0, 1.0, 1.0]), 1).tolist() == [True, False, False]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(1, 4), n=st.integers(0, 25))
def test_select_top_k_torch_matches_numpy_row_by_row(data, rows, n):
    s = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=rows * n, max_size=rows * n)))
    s = s.reshape(rows, n)
    ks = data.draw(st.lists(st.integers(0, n + 2), min_size=rows, max_size=rows))
    forced = np.array(data.draw(st.lists(st.booleans(), min_size=rows * n,
                                         max_size=rows * n)), dtype=bool).reshape(rows, n)
    batched = select_top_k(torch.tensor(s), torch.tensor(ks), torch.tensor(forced)).numpy()
    for r in range(rows):
        assert batched[r].tolist() == select_top_k(s[r], ks[r], forced[r]).tolist()
        assert batched[r].sum() == max(min(ks[r], n), forced[r].sum())
