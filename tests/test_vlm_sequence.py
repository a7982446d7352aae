"""The pieces of vlm.prune that need no model: compaction with left re-padding, the decode
mask, the checks on a method's answer, the merge, Idefics3's crops per image."""

from __future__ import annotations

import pytest
import torch

from tokensieve.errors import UsageError
from tokensieve.vlm.adapters import crop_groups
from tokensieve.vlm.sequence import as_into, compact, merged_features, shrink_mask, take


def test_compact_packs_kept_positions_right_and_left_pads():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.bool)
    kept = compact(keep)
    assert kept.idx.tolist() == [[0, 2, 3], [0, 1, 4]]
    assert kept.valid.tolist() == [[True, True, True], [False, True, True]]
    assert (kept.length, kept.width, kept.dropped) == (5, 3, 2)
    x = torch.arange(10).view(2, 5)
    assert take(x, kept).tolist() == [[0, 2, 3], [5, 6, 9]]
    pos3 = torch.arange(30).view(3, 2, 5)
    assert take(pos3, kept, 2)[:, 1].tolist() == [[5, 6, 9], [15, 16, 19], [25, 26, 29]]
    emb = torch.arange(20.).view(2, 5, 2)
    assert take(emb, kept)[1].tolist() == [[10., 11.], [12., 13.], [18., 19.]]


def test_shrink_mask_follows_the_shortened_cache():
    kept = compact(torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.bool))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]])  # L=5 prompt + 2 new
    # the cache holds L' + 1 = 4 entries, the call brings 1 token: a mask of 5 in the new frame
    assert shrink_mask(mask, kept, past=4, q=1).tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    short = torch.ones(2, 5, dtype=torch.long)
    assert shrink_mask(short, kept, past=4, q=1) is short      # already shortened
    for bad in (torch.ones(2, 6), torch.ones(3, 7), torch.ones(2, 1, 1, 7)):
        with pytest.raises(UsageError) as err:
            shrink_mask(bad, kept, past=4, q=1)
        assert "\n" not in str(err.value)


def test_as_into_checks_the_method_answer():
    assert as_into(torch.tensor([True, False, True]), 2, 3, "m").tolist() == [0, -1, 2]
    assert as_into(torch.tensor([0, 0, 2]), 2, 3, "m").tolist() == [0, 0, 2]
    bad = [(torch.tensor([True, True, True]), "exactly 2"),     # too many
           (torch.tensor([0, 2, -1]), "exactly 2"),             # merged into a dropped one
           (torch.tensor([1, 1, 5]), "exactly 2"),              # out of range
           (torch.tensor([0.5, 1.0, 0.0]), "bool mask"),
           (torch.tensor([True, False]), "shape")]
    for answer, match in bad:
        with pytest.raises(UsageError, match=match):
            as_into(answer, 2, 3, "m")


def test_merged_features_average_groups_and_copy_singletons():
    feats = torch.tensor([[1., 1.], [3., 5.], [0.1, 0.2], [5., 9.]])
    into = torch.tensor([0, 2, 2, -1])      # 1 merges into 2; 3 is dropped
    out = merged_features(feats, into)
    assert torch.equal(out[0], feats[0])
    torch.testing.assert_close(out[1], (feats[1] + feats[2]) / 2)


def _idefics_row(images: list[int], marker: int = 9, image: int = 7) -> list[int]:
    """A row in Idefics3's layout: per image, crops with <row_col> tokens, then the global
    view after the marker; 2 image tokens per crop."""
    out = [1, 2]
    for crops in images:
        for c in range(crops - 1):
            out += [8, 20 + c, image, image]
        out += [8, marker, image, image, 8, 3]
    return out


def test_crop_groups_split_crops_into_images():
    rows = [_idefics_row([3, 1]), [0] * 14 + _idefics_row([1])]   # left-padded
    ids = torch.tensor(rows)
    assert crop_groups(ids, 7, crops=5, size=2) == [3, 1, 1]
    with pytest.raises(UsageError, match="pixel_values 4"):
        crop_groups(ids, 7, crops=4, size=2)
    odd = torch.tensor([[1, 8, 9, 7, 7, 7]])
    with pytest.raises(UsageError, match="whole number"):
        crop_groups(odd, 7, crops=1, size=2)
