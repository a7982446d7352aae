"""`tokensieve bench vlm-layers`: which cell a corner question asks about, the attention share
on it, and the per-layer profile on a tiny VLM (the real run needs the small VLM)."""

from __future__ import annotations

import pytest
import torch

from tokensieve.bench import vlm_data as D
from tokensieve.bench.vlm_layers import asked_cell, cell_masks, markdown, profile, shares


def test_cell_masks_split_the_raster_into_row_major_quarters():
    m = cell_masks(4)
    assert m.shape == (4, 16) and m.sum(1).tolist() == [4, 4, 4, 4]
    assert (m.sum(0) == 1).all()                          # every patch in exactly one cell
    assert m[0].nonzero().flatten().tolist() == [0, 1, 4, 5]        # top left
    assert m[1].nonzero().flatten().tolist() == [2, 3, 6, 7]        # top right
    assert m[3].nonzero().flatten().tolist() == [10, 11, 14, 15]    # bottom right
    with pytest.raises(ValueError):
        cell_masks(3)


def test_asked_cell_reads_the_named_corner_or_the_answer():
    for i, corner in enumerate(D.CORNERS):
        what = D.Example(0, "corner_what", D.corner_what_question(corner), "ship")
        which = D.Example(0, "corner_which", D.corner_which_question("ship"), corner)
        assert asked_cell(what) == i and asked_cell(which) == i


def test_shares_of_attention_and_of_the_top_tokens():
    w = torch.tensor([0.5, 0.2, 0.2, 0.1])
    cell = torch.tensor([True, False, False, True])
    share, hit = shares(w, cell, 2)
    assert share == pytest.approx(0.6)
    assert hit == pytest.approx(0.5)                      # top 2: tokens 0 (in) and 1 or 2
    assert shares(w, cell, 1)[1] == 1.0
    assert shares(w, cell, 99)[1] == pytest.approx(0.5)   # a count above N: every token


@pytest.mark.model
def test_profile_covers_every_layer_and_restores_the_attention_kernel():
    from test_vlm_small import _fake_pools, build_tiny_vlm

    from tokensieve.models.llava_small import build_processor

    processor = build_processor()
    model = build_tiny_vlm(processor)
    before = model.config._attn_implementation
    data = D.build("dev", n_single=0, n_grid=3, seed=0, pools=_fake_pools())
    out = profile(model, processor, data, count=32)
    assert model.config._attn_implementation == before
    n_corner = sum(e.qtype in ("corner_what", "corner_which") for e in data.examples)
    layers = model.config.text_config.num_hidden_layers
    got = sum(out[q]["last"][0]["n"] for q in out)
    assert got == n_corner
    for by_query in out.values():
        for rows in by_query.values():
            assert [r["layer"] for r in rows] == list(range(layers))
            assert all(0.0 <= r["share"] <= 1.0 and 0.0 <= r["top_hit"] <= 1.0 for r in rows)
    heads = model.config.text_config.num_attention_heads
    for rows in (out[q]["last"] for q in out):
        assert all(0 <= r["best_head"] < heads and 0.0 <= r["best_head_share"] <= 1.0
                   for r in rows)
    md = markdown({"meta": {"split": "dev", "grids": 3, "count": 32, "threads": 1,
                            "seconds": 1.0}, "layers": out})
    assert "| 0 |" in md and "corner_what" in md
