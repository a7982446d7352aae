"""VLM methods scored before the language model: visionzip, vtc-cls, hiprune, visiondrop and
zeroth, on synthetic inputs whose right answer is known."""

from __future__ import annotations

import pytest
import torch

from tokensieve.engine.merge import contextual_groups
from tokensieve.errors import UsageError
from tokensieve.vlm.methods import METHODS, Inside, Visual, get_method

NEW = ("visionzip", "vtc-cls", "hiprune", "visiondrop", "zeroth")
FIELDS = {"text", "vision", "attention", "cls_attention", "project", "grid"}


def softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)


def full_visual(count: int, n: int = 36, grid=(6, 6), seed: int = 0, layers: int = 6) -> Visual:
    """Every field filled from a seeded generator: attention maps, [CLS] attention, vision
    features and a linear projector."""
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(n, 12, generator=g)
    weight = torch.randn(12, 8, generator=g)
    return Visual(
        features=vision @ weight, count=count, grid=grid, text=torch.randn(3, 8, generator=g),
        vision=vision,
        attention=[softmax_rows(torch.randn(n, n, generator=g) * 3) for _ in range(layers)],
        cls_attention=[softmax_rows(torch.randn(n, generator=g) * 3) for _ in range(layers)],
        project=lambda x: x @ weight, generator=torch.Generator().manual_seed(seed))


def kept(out: torch.Tensor) -> set[int]:
    if out.dtype == torch.bool:
        return set(out.nonzero().flatten().tolist())
    return set((out == torch.arange(len(out))).nonzero().flatten().tolist())


def check_valid(out: torch.Tensor, v: Visual) -> None:
    """Exactly ``count`` kept; an ``into`` vector only points at kept tokens or -1."""
    assert out.shape == (v.n,)
    assert len(kept(out)) == v.count
    if out.dtype != torch.bool:
        assert out.dtype == torch.long
        fixed = torch.tensor(sorted(kept(out)))
        assert bool(torch.isin(out[out >= 0], fixed).all())
        assert bool((out >= -1).all())


# ------------------------------------------------------------------------- all methods


def test_registered_with_needs_and_question_awareness():
    for name in NEW:
        cls = METHODS[name]
        assert cls.name == name
        assert cls.needs and cls.needs <= FIELDS
        assert cls.question_aware is False
        assert "before" in cls.stages


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("count", [1, 2, 5, 9, 35, 36])
def test_exact_budget_and_valid_output(name, count):
    v = full_visual(count)
    check_valid(get_method(name).select(v), v)


@pytest.mark.parametrize("name", NEW)
def test_deterministic_for_a_fixed_generator(name):
    a = get_method(name).select(full_visual(9, seed=3))
    b = get_method(name).select(full_visual(9, seed=3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NEW)
def test_missing_input_is_a_usage_error_naming_it(name):
    method = get_method(name)
    # visionzip and hiprune fall back from [CLS] attention to the attention received
    blank = {"attention": ["attention", "cls_attention"]}
    for field in method.needs:
        v = full_visual(5)
        for f in blank.get(field, [field]):
            setattr(v, f, None)
        with pytest.raises(UsageError, match=field):
            method.select(v)


def test_cls_free_tower_works_for_visionzip_and_hiprune():
    for name in ("visionzip", "hiprune", "visiondrop"):
        v = full_visual(7)
        v.cls_attention = None
        check_valid(get_method(name).select(v), v)
    v = full_visual(7)
    v.cls_attention = None
    with pytest.raises(UsageError, match="cls_attention"):
        get_method("vtc-cls").select(v)


@pytest.mark.parametrize("spec", ["visionzip:contextual=1.5", "visionzip:contextual=-0.1",
                                  "vtc-cls:layers=-1", "hiprune:anchors=2",
                                  "zeroth:directions=0", "zeroth:directions=1000",
                                  "zeroth:eps=0", "zeroth:rows=0", "visiondrop:contextual=1",
                                  "visionzip:dominant=3"])
def test_bad_settings_are_usage_errors(spec):
    with pytest.raises(UsageError):
        get_method(spec)


@pytest.mark.parametrize("spec", ["visionzip:layer=6", "visionzip:layer=-7",
                                  "hiprune:middle=9", "hiprune:deep=6", "visiondrop:layer=10"])
def test_a_layer_the_tower_lacks_is_a_usage_error(spec):
    with pytest.raises(UsageError, match="layer"):
        get_method(spec).select(full_visual(5))


# --------------------------------------------------------------------------- visionzip


def clustered_visual(count: int) -> Visual:
    """16 tokens; [CLS] attention highest on 0..7 (decreasing), vision features of 8..11 near
    one direction and of 12..15 near another."""
    n = 16
    cls = torch.linspace(1.0, 0.1, n)
    g = torch.Generator().manual_seed(0)
    vision = torch.randn(n, 6, generator=g) * 0.05
    vision[8:12, 0] += 1.0
    vision[12:16, 1] += 1.0
    vision[:8, 2] += 1.0
    flat = torch.full((n, n), 1 / n)
    return Visual(features=vision.clone(), count=count, vision=vision, attention=[flat],
                  cls_attention=[cls / cls.sum()])


def test_visionzip_keeps_dominant_and_merges_into_the_most_similar_target():
    # budget 10 with contextual 0.2: 2 contextual tokens, 8 dominant (tokens 0..7); targets
    # evenly spaced among 8..15 are 8 and 15; 9..11 join 8, 12..14 join 15
    out = get_method("visionzip:contextual=0.2").select(clustered_visual(10))
    assert out.tolist() == list(range(8)) + [8, 8, 8, 8, 15, 15, 15, 15]


def test_visionzip_split_follows_the_paper_by_default():
    # 64 of 256: 54 dominant + 10 contextual (VisionZip's split)
    v = full_visual(64, n=256, grid=(16, 16), layers=2)
    out = get_method("visionzip").select(v)
    check_valid(out, v)
    dominant = set(v.cls_attention[-1].topk(54).indices.tolist())
    assert dominant <= kept(out) and len(kept(out) - dominant) == 10


def test_visionzip_merged_tokens_join_their_most_similar_target():
    v = full_visual(12, seed=5)
    out = get_method("visionzip:contextual=0.5").select(v)
    check_valid(out, v)
    fixed = kept(out)
    targets = sorted(fixed - set(v.cls_attention[-1].topk(6).indices.tolist()))
    assert len(targets) == 6
    m = torch.nn.functional.normalize(v.vision, dim=-1)
    for i in range(v.n):
        if i not in fixed:
            sims = m[i] @ m[targets].T
            assert out[i].item() == targets[int(sims.argmax())]


def test_visionzip_layer_setting_and_received_attention_without_cls():
    v = clustered_visual(1)
    v.cls_attention = [torch.eye(16)[3], v.cls_attention[0]]
    assert kept(get_method("visionzip:layer=0").select(v)) == {3}
    assert kept(get_method("visionzip").select(v)) == {0}
    # no [CLS]: the token the others attend to most is dominant
    a = torch.full((16, 16), 0.5 / 15)
    a[:, 11] = 0.5
    a.fill_diagonal_(0.0)
    v.cls_attention, v.attention = None, [a]
    assert kept(get_method("visionzip").select(v)) == {11}


def test_visionzip_without_contextual_share_prunes():
    out = get_method("visionzip:contextual=0").select(clustered_visual(5))
    assert out.dtype == torch.bool and kept(out) == {0, 1, 2, 3, 4}


def test_contextual_groups_target_always_joins_itself():
    # two identical targets: each still holds itself (ties would send the later to the first)
    metric = torch.ones(1, 6, 3)
    dominant = torch.tensor([[True, False, False, False, False, False]])
    rest, targets, group = contextual_groups(metric, dominant, 2)
    assert rest.tolist() == [[1, 2, 3, 4, 5]] and targets.tolist() == [[1, 5]]
    assert group.tolist() == [[0, 0, 0, 0, 1]]


# ----------------------------------------------------------------------------- vtc-cls


def test_vtc_cls_averages_the_last_layers():
    n = 10
    early = torch.zeros(n)
    early[0] = 1.0                         # only in layers the default does not read
    spike = torch.full((n,), 0.5 / 9)
    spike[1] = 0.5                         # 0.5 in one layer: mean over 4 about 0.18
    steady = torch.full((n,), 0.7 / 9)
    steady[2] = 0.3                        # 0.3 in three of the four: mean about 0.24
    maps = [early, early, spike, steady, steady, steady]
    v = Visual(features=torch.randn(n, 4), count=1, cls_attention=maps)
    assert kept(get_method("vtc-cls").select(v)) == {2}
    v.count = 2
    assert kept(get_method("vtc-cls").select(v)) == {1, 2}
    v.count = 1
    assert kept(get_method("vtc-cls:layers=0").select(v)) == {0}   # all six layers
    assert kept(get_method("vtc-cls:layers=4").select(v)) == {2}


def test_vtc_cls_keeps_the_highest_cls_attention():
    v = full_visual(9, seed=2)
    out = get_method("vtc-cls:layers=1").select(v)
    assert kept(out) == set(v.cls_attention[-1].topk(9).indices.tolist())


# ----------------------------------------------------------------------------- hiprune


def hiprune_visual(count: int, cls: bool = True) -> Visual:
    """6x6 grid. Middle layer (index 1 of 3): anchor at 14 = (2, 2), its neighbours 8, 13,
    15, 20 scored 0.5, 0.4, 0.3, 0.2. Deep layer: highest at 0, 35, 5, 30, 17, 14, 8."""
    n = 36
    mid = torch.full((n,), 0.01)
    mid[14] = 1.0
    mid[[8, 13, 15, 20]] = torch.tensor([0.5, 0.4, 0.3, 0.2])
    deep = torch.full((n,), 0.01)
    deep[[0, 35, 5, 30, 17, 14, 8]] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.99, 0.98])
    flat = torch.full((n,), 0.01)
    if cls:
        return Visual(features=torch.randn(n, 4), count=count, grid=(6, 6),
                      attention=[torch.full((n, n), 1 / n)] * 3, cls_attention=[flat, mid, deep])

    def to_received(score):            # every query attends by ``score``
        a = score.expand(n, n).clone()
        a.fill_diagonal_(0.0)
        return a
    return Visual(features=torch.randn(n, 4), count=count, grid=(6, 6),
                  attention=[to_received(flat), to_received(mid), to_received(deep)])


@pytest.mark.parametrize("cls", [True, False])
def test_hiprune_anchor_buffer_then_registers(cls):
    # budget 10, anchors 0.1: one anchor (14), its four neighbours, then five registers by
    # the deep layer among the rest (14 and 8 are already in)
    out = get_method("hiprune").select(hiprune_visual(10, cls))
    assert kept(out) == {14, 8, 13, 15, 20, 0, 35, 5, 30, 17}


def test_hiprune_buffer_cut_to_the_budget_by_attention():
    assert kept(get_method("hiprune").select(hiprune_visual(3))) == {14, 8, 13}
    assert kept(get_method("hiprune").select(hiprune_visual(1))) == {14}


def test_hiprune_split_and_layers_are_settable():
    # no anchors: registers only (deep layer)
    assert kept(get_method("hiprune:anchors=0").select(hiprune_visual(3))) == {14, 8, 0}
    # middle layer = the deep one: anchor 14, neighbours by that layer's score first (8)
    assert kept(get_method("hiprune:middle=2").select(hiprune_visual(2))) == {14, 8}


def test_hiprune_needs_a_grid_that_fits():
    v = hiprune_visual(5)
    v.grid = (4, 4)
    with pytest.raises(UsageError, match="grid"):
        get_method("hiprune").select(v)


# -------------------------------------------------------------------------- visiondrop


def test_visiondrop_counts_only_attention_from_other_tokens():
    n = 12
    a = torch.full((n, n), 0.5 / (n - 1))
    a[:, 9] = 0.2                 # token 9: attended to by every other token
    a[5, 5] = 0.95                # token 5: attends to itself a lot, no one else does
    a[:, 5] = 0.01
    a[5, 5] = 0.95
    v = Visual(features=torch.randn(n, 4), count=1, attention=[a])
    assert kept(get_method("visiondrop").select(v)) == {9}
    v.count = 2
    assert 5 not in kept(get_method("visiondrop").select(v))


def test_visiondrop_inside_uses_visual_attention_and_can_merge():
    n = 8
    att = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.0, 0.05, 0.7])
    hidden = torch.eye(n)
    inside = Inside(hidden=hidden, hidden_in=hidden, count=3, layer=2, num_layers=4,
                    text_attention=torch.zeros(n), last_attention=torch.zeros(n),
                    text_hidden=torch.zeros(2, n), visual_attention=att)
    assert kept(get_method("visiondrop").select(inside)) == {1, 3, 7}
    out = get_method("visiondrop:contextual=0.3").select(inside)
    check_valid(out, inside)
    assert {1, 3} <= kept(out) and out.dtype == torch.long


# ------------------------------------------------------------------------------ zeroth


def amplifying_visual(count: int, loud: list[int], n: int = 20) -> Visual:
    """Tokens in ``loud`` carry a marker (+5 in dimension 0) that makes the projector
    amplify their input tenfold; the others (-5) pass through as they are."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    x[:, 0] = -5.0
    x[loud, 0] = 5.0

    def project(inp):
        return inp * torch.where(inp[:, :1] > 0, 10.0, 1.0)
    return Visual(features=project(x), count=count, vision=x, project=project,
                  generator=torch.Generator().manual_seed(0))


def test_zeroth_keeps_the_tokens_the_projector_amplifies():
    loud = [2, 7, 11, 19]
    assert kept(get_method("zeroth").select(amplifying_visual(4, loud))) == set(loud)
    assert kept(get_method("zeroth").select(amplifying_visual(2, loud))) < set(loud)


def test_zeroth_cost_is_bounded_and_batched():
    v = amplifying_visual(4, [1, 2])
    calls = []
    inner = v.project

    def counting(inp):
        calls.append(inp.shape[0])
        return inner(inp)
    v.project = counting
    get_method("zeroth:directions=3,rows=8").select(v)
    assert max(calls) <= 8 and sum(calls) == (3 + 1) * v.n


def test_zeroth_directions_come_from_the_generator():
    v = full_visual(9, seed=4)
    method = get_method("zeroth:directions=2")
    first = method.select(v)
    v.generator = torch.Generator().manual_seed(4)
    assert torch.equal(method.select(v), first)


def test_zeroth_diverse_skips_a_duplicate_of_a_kept_token():
    v = amplifying_visual(2, [2, 7])
    v.vision[7] = v.vision[2]
    v.features = v.project(v.vision)
    assert kept(get_method("zeroth").select(v)) == {2, 7}
    diverse = kept(get_method("zeroth:diverse=true").select(v))
    assert 2 in diverse and 7 not in diverse
    v.count = 20
    check_valid(get_method("zeroth:diverse=true").select(v), v)


def test_zeroth_works_in_bfloat16():
    v = amplifying_visual(4, [3, 5, 8, 13])
    v.vision = v.vision.bfloat16()
    v.features = v.project(v.vision)
    assert kept(get_method("zeroth").select(v)) == {3, 5, 8, 13}
