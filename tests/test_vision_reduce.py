"""vision.reduce on tiny random Hugging Face encoders: identity at keep=1, exact values at a
reduction after the last block, proportional attention, reversibility, bad input."""

from __future__ import annotations

import pytest
import torch
from vision_models import FAMILIES, build, encoder_output, tokens

from tokensieve import vision
from tokensieve.engine import keep_count
from tokensieve.errors import UsageError

METHODS = list(vision.METHODS)
CLS_ONLY = {"evit", "visionzip"}


def _pixels(b=2, h=32, w=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_bit_identical_for_every_method(family, attn):
    model, _ = build(family, attn)
    x = _pixels(3)
    ref = tokens(model, x)
    for method in METHODS:
        with vision.reduce(model, method, keep=1.0, at=[0, 1]):
            out = tokens(model, x)
        assert torch.equal(out, ref), (family, attn, method)


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2_registers", "siglip"])
@pytest.mark.parametrize("method", METHODS)
def test_reduction_after_the_last_block_gives_exact_values(family, method):
    """Reducing after the last block changes nothing upstream, so the outputs are exactly
    the unpatched rows: prefix rows unchanged, kept rows copied, merged rows the mean of
    their members."""
    model, prefix = build(family)
    if prefix == 0 and method in CLS_ONLY:
        pytest.skip("needs a CLS token (tested in test_cls_methods_refuse_models_without_cls)")
    x = _pixels(2)
    ref = encoder_output(model, x)
    last = model.config.num_hidden_layers - 1
    with vision.reduce(model, method, keep=0.25, at=last) as r:
        out = encoder_output(model, x)
    assert out.shape[1] == prefix + 4
    assert torch.equal(out[:, :prefix], ref[:, :prefix])
    trace = r.last
    assert trace.prefix == prefix and trace.grid == (4, 4)
    groups = trace.groups(1)
    assert len(groups) == 4 and sorted(p for g in groups for p in g) == \
        (trace.source[1] >= 0).nonzero().flatten().tolist()
    assert trace.to_dict()["source"][1] == trace.source[1].tolist()
    assert trace.tokens == [prefix + 16, prefix + 4]
    patches = ref[:, prefix:]
    for b in range(2):
        src = trace.source[b]
        assert src.min() >= -1 and src.max() == 3
        for j in range(4):
            members = (src == j).nonzero().flatten()
            assert trace.sizes[b, j] == len(members) >= 1
            if method == "evit" and len(members) > 1:
                continue  # attention-weighted fuse, checked below
            torch.testing.assert_close(out[b, prefix + j], patches[b, members].mean(0))


def test_evit_fuses_the_inattentive_tokens_by_attention():
    model, prefix = build("vit")
    x = _pixels(1)
    ref = encoder_output(model, x)
    with vision.reduce(model, "evit", keep=0.5, at=2) as r:
        out = encoder_output(model, x)
    src = r.last.source[0]
    fused = [j for j in range(8) if (src == j).sum() > 1]
    assert len(fused) == 1  # 7 kept + 1 fused token
    members = (src == fused[0]).nonzero().flatten()
    assert len(members) == 9
    row = out[0, prefix + fused[0]]
    # a convex combination of its members, not their plain mean
    lo, hi = ref[0, prefix + members].min(0).values, ref[0, prefix + members].max(0).values
    assert bool(((row >= lo - 1e-5) & (row <= hi + 1e-5)).all())


def test_proportional_attention_makes_merging_duplicates_exact():
    """All patches identical (constant image, no position embedding): merging them into
    one token of size n must not change the CLS output, because attention then weighs the
    merged token by log(size). Without it, the CLS output moves."""
    model, _ = build("vit")
    with torch.no_grad():
        model.embeddings.position_embeddings.zero_()
    x = torch.full((1, 3, 32, 32), 0.3)
    ref = tokens(model, x)
    with vision.reduce(model, "tome", keep=1 / 16, at=0) as r:
        out = tokens(model, x)
    assert out.shape[1] == 2 and r.last.sizes.tolist() == [[16.0]]
    torch.testing.assert_close(out[:, 0], ref[:, 0], atol=1e-5, rtol=1e-5)
    with vision.reduce(model, "tome", keep=1 / 16, at=0, proportional=False):
        plain = tokens(model, x)
    assert (plain[:, 0] - ref[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_the_budget_on_a_non_square_batch(method):
    model, prefix = build("dinov2")  # interpolates its position embeddings
    x = _pixels(3, 40, 64)           # a 5 x 8 grid
    for keep, expected in ((0.5, 20), (0.1, 4)):
        with vision.reduce(model, method, keep=keep, at=[0, 1]) as r:
            out = tokens(model, x)
        assert out.shape == (3, prefix + expected, 32)
        assert bool(torch.isfinite(out).all())
        assert r.last.grid == (5, 8)
        middle = keep_count((expected / 40) ** 0.5, 40)  # the engine's one rounding rule
        assert r.last.tokens == [41, prefix + middle, prefix + expected]
        # every original patch is accounted for: in a final token or dropped
        kept = r.last.source >= 0
        assert (r.last.sizes.sum(-1) == kept.sum(-1)).all()
    with vision.reduce(model, method, count=7) as r:
        assert tokens(model, x).shape[1] == prefix + 7


def test_methods_are_deterministic_for_a_seed_and_random_differs_per_image():
    model, _ = build("vit")
    x = _pixels(1).expand(2, -1, -1, -1)  # the same image twice
    runs = []
    for _ in range(2):
        with vision.reduce(model, "random", keep=0.25, seed=3) as r:
            tokens(model, x)
        runs.append(r.last.source)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][1])


def test_cls_methods_refuse_models_without_cls():
    model, _ = build("siglip")
    with pytest.raises(UsageError, match="no CLS token"):
        with vision.reduce(model, "evit", keep=0.5):
            tokens(model, _pixels())


def test_default_method_works_without_cls():
    model, _ = build("siglip")
    with vision.reduce(model, "default", keep=0.5) as r:
        out = tokens(model, _pixels())
    assert out.shape[1] == 8 and r.last.prefix == 0


# ------------------------------------------------------------------ contained and reversible

def _patched_state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    taps = sum("_tokensieve_tap" in m.__dict__ or "forward" in m.__dict__
               for m in model.modules())
    configs = {id(m.config) for m in model.modules() if hasattr(m, "config")}
    return hooks, taps, configs


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_is_left_behind_after_exit_or_error(family):
    model, _ = build(family)
    before = _patched_state(model)
    x = _pixels()
    ref = tokens(model, x)
    with vision.reduce(model, "tome", keep=0.5, at=[0, 1]):
        assert _patched_state(model) != before
    assert _patched_state(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with vision.reduce(model, "default", keep=0.5):
            tokens(model, x)
            raise RuntimeError("boom")
    assert _patched_state(model) == before
    assert torch.equal(tokens(model, x), ref)
    # the class is untouched: a second model of the same class is not affected
    other, _ = build(family)
    with vision.reduce(model, "tome", keep=0.25):
        assert tokens(other, x).shape == ref.shape


def test_apply_and_remove():
    model, _ = build("vit")
    x = _pixels()
    ref = tokens(model, x)
    r = vision.apply(model, "default", keep=0.5)
    assert tokens(model, x).shape[1] == 9
    vision.remove(r)
    assert torch.equal(tokens(model, x), ref)


def test_sdpa_stays_on(monkeypatch):
    """Scores come from the tap's own CLS row; the model's attention kernel is untouched."""
    model, _ = build("vit", "sdpa")
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with vision.reduce(model, "default", keep=0.5, at=0):
        assert model.config._attn_implementation == "sdpa"
        tokens(model, _pixels())
    assert len(calls) == 3
    assert [s[2] for s in calls] == [17, 9, 9]  # fewer tokens after block 0


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(keep=0), "fraction of tokens to keep"),
    (dict(keep=1.5), "fraction of tokens to keep"),
    (dict(keep="0.5"), "fraction of tokens to keep"),
    (dict(), "give a budget"),
    (dict(keep=0.5, count=3), "either keep= or count="),
    (dict(count=0), "count is the number"),
    (dict(keep=0.5, at=7), "at= names the blocks"),
    (dict(keep=0.5, at=[1, 1]), "at= names the blocks"),
])
def test_bad_budgets_are_refused(kwargs, match):
    model, _ = build("vit")
    with pytest.raises(UsageError, match=match):
        vision.reduce(model, "default", **kwargs)


def test_bad_models_methods_and_counts_are_refused():
    with pytest.raises(UsageError, match="unsupported model type Linear"):
        vision.reduce(torch.nn.Linear(2, 2), keep=0.5)
    model, _ = build("vit")
    with pytest.raises(UsageError, match="unknown vision method 'nope'.*tome"):
        vision.reduce(model, "nope", keep=0.5)
    with pytest.raises(UsageError, match="bad settings for vision method 'dart'"):
        vision.reduce(model, "dart:bogus=1", keep=0.5)
    with pytest.raises(UsageError, match="count=40 is more than the 16 patch tokens"):
        with vision.reduce(model, count=40):
            tokens(model, _pixels())
    with vision.reduce(model, keep=0.5):
        with pytest.raises(UsageError, match="already patched"):
            vision.reduce(model, keep=0.5).apply()
