"""Vision methods on hand-made steps: each one does what its paper says, on values."""

from __future__ import annotations

import torch

from tokensieve.engine.merge import combine
from tokensieve.vision.methods import get_method
from tokensieve.vision.methods.base import Step
from tokensieve.vision.methods.simple import grid_indices


def _step(keys, n_keep, cls_attn=None, x=None, **kw):
    keys = torch.as_tensor(keys, dtype=torch.float32)
    b, n, _ = keys.shape
    return Step(x=keys.clone() if x is None else x, sizes=torch.ones(b, n), n_keep=n_keep,
                layer=1, num_layers=12, keys=keys, cls_attn=cls_attn, **kw)


def _groups(slot):
    return sorted(sorted((slot == s).nonzero().flatten().tolist()) for s in slot.unique()
                  if s >= 0)


def test_combine_weighted_mean_single_copy_and_drop():
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]]])
    y, mass = combine(x, torch.tensor([[0, 0, 1, -1]]), 2, torch.tensor([[1.0, 3.0, 2.0, 9.0]]))
    torch.testing.assert_close(y, torch.tensor([[[2.5, 1.5], [5.0, 4.0]]]))
    torch.testing.assert_close(mass, torch.tensor([[4.0, 2.0]]))


# pairs of near-duplicates: (0, 5) (1, 4) (2, 7) (3, 6)
BASE = torch.eye(4)
KEYS = torch.stack([BASE[0], BASE[1], BASE[2], BASE[3], BASE[1] + 0.01, BASE[0] + 0.01,
                    BASE[3] + 0.02, BASE[2] + 0.02])[None]


def test_tome_merges_the_duplicate_pairs():
    plan = get_method("tome").assign(_step(KEYS, 4))
    assert plan.n_out == 4
    assert _groups(plan.slot[0]) == [[0, 5], [1, 4], [2, 7], [3, 6]]


def test_informed_match_merges_duplicates_and_never_merges_away_protected_tokens():
    attn = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.1]])
    plan = get_method("informed:mode=match,protect=0.5").assign(_step(KEYS, 4, attn))
    assert _groups(plan.slot[0]) == [[0, 5], [1, 4], [2, 7], [3, 6]]
    # down to 2 tokens: the two protected ones (5 and 7) stay in different tokens
    plan = get_method("informed:mode=match,protect=1.0").assign(_step(KEYS, 2, attn))
    slot = plan.slot[0]
    assert plan.n_out == 2 and slot[5] != slot[7] and (slot >= 0).all()


def test_informed_nearest_keeps_the_attended_and_merges_into_them():
    attn = torch.tensor([[0.5, 0.4, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05]])
    plan = get_method("informed:mode=nearest").assign(_step(KEYS, 2, attn))
    groups = _groups(plan.slot[0])
    assert [0] == [g for g in groups if 0 in g][0][:1] and any(1 in g and 4 in g for g in groups)
    assert (plan.slot[0] >= 0).all()


def test_evit_keeps_top_attention_and_fuses_the_rest_by_attention():
    attn = torch.tensor([[0.4, 0.3, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0]])
    plan = get_method("evit").assign(_step(KEYS, 3, attn))
    slot = plan.slot[0]
    assert slot[0] != slot[1] and len(set(slot[2:].tolist())) == 1
    torch.testing.assert_close(plan.weight[0, :2], attn[0, :2])


def test_dart_keeps_pivots_and_the_least_duplicated():
    keys = torch.stack([BASE[0] * 5, BASE[0] * 1.0 + 0.1, BASE[1], BASE[2], BASE[3]])[None]
    plan = get_method("dart:pivots=1").assign(_step(keys, 3))
    kept = (plan.slot[0] >= 0).nonzero().flatten().tolist()
    assert 0 in kept and 1 not in kept  # token 1 duplicates the pivot


def test_todre_is_greedy_k_center():
    pts = torch.tensor([[[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0], [-0.99, 0.1]]])
    attn = torch.tensor([[1.0, 0, 0, 0, 0]])
    plan = get_method("todre").assign(_step(pts, 3, attn, x=pts))
    assert (plan.slot[0] >= 0).nonzero().flatten().tolist() == [0, 2, 3]


def test_visionzip_dominant_plus_contextual():
    attn = torch.linspace(1, 0, 8)[None]
    plan = get_method("visionzip:contextual=0.5").assign(_step(KEYS, 4, attn))
    slot = plan.slot[0]
    assert plan.n_out == 4 and slot[0] != slot[1]
    assert (slot >= 0).all()  # contextual tokens absorb every non-dominant token


def test_grid_indices_spread_evenly():
    idx = grid_indices(4, 4, 4)
    assert idx.tolist() == [0, 3, 12, 15]
    assert grid_indices(5, 8, 10).numel() == 10


def test_repshift_keeps_the_most_changed_tokens():
    x_in = torch.zeros(1, 4, 2)
    x = torch.tensor([[[0.1, 0], [3.0, 0], [0, 0.2], [0, 2.0]]])
    plan = get_method("repshift").assign(_step(torch.zeros(1, 4, 2), 2, x=x, x_in=x_in))
    assert (plan.slot[0] >= 0).nonzero().flatten().tolist() == [1, 3]
