"""VLM methods dart, todre, mmtok, recover (before the LLM), fastv, transprune (inside it) on
synthetic tokens built so that the right answer is known."""

from __future__ import annotations

import pytest
import torch

from tokensieve.engine.diversity import facility_location, k_center
from tokensieve.engine.select import quantise
from tokensieve.errors import UsageError
from tokensieve.vlm.methods import METHODS, Inside, Visual, get_method

BEFORE = ["dart", "todre", "mmtok", "recover"]
INSIDE = ["fastv", "fastv:query=text", "transprune", "dart"]
K, PER, D = 4, 8, 24  # clusters, tokens per cluster, width


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clusters(seed: int = 0, noise: float = 0.05):
    """K well separated clusters of PER tokens each (orthogonal centres), in blocks of PER:
    (features (K*PER, D), label (K*PER,))."""
    g = _gen(seed)
    centres = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:K] * 3   # (K, D) orthogonal
    label = torch.arange(K).repeat_interleave(PER)
    x = centres[label] + noise * torch.randn(K * PER, D, generator=g)
    return x, label


def _visual(x, count, **kw) -> Visual:
    return Visual(features=x, count=count, **kw)


def _inside(n: int = 32, count: int = 4, seed: int = 0, **kw) -> Inside:
    g = _gen(seed)
    fields = dict(hidden=torch.randn(n, D, generator=g),
                  hidden_in=torch.randn(n, D, generator=g),
                  text_attention=torch.rand(n, generator=g),
                  last_attention=torch.rand(n, generator=g),
                  text_hidden=torch.randn(3, D, generator=g),
                  visual_attention=torch.rand(n, generator=g))
    fields.update(kw)
    return Inside(count=count, layer=2, num_layers=8, **fields)


def _kept(mask: torch.Tensor) -> list[int]:
    assert mask.dtype == torch.bool
    return mask.nonzero().flatten().tolist()


# ------------------------------------------------------------------------------ registry


def test_registered_with_stages_and_question_awareness():
    for name in BEFORE + ["fastv", "transprune"]:
        assert name in METHODS
    assert METHODS["dart"].stages == {"before", "inside"}
    assert METHODS["fastv"].stages == METHODS["transprune"].stages == {"inside"}
    for name in ("todre", "mmtok", "recover"):
        assert METHODS[name].stages == {"before"} and get_method(name).question_aware
    assert not get_method("dart").question_aware
    # a method that gives the text no weight does not read it
    assert not get_method("todre:relevance=0").question_aware
    assert not get_method("mmtok:text=0").question_aware
    assert not get_method("recover:recover=0").question_aware
    assert not get_method("transprune:attention=0").question_aware
    assert get_method("recover:score=cls").needs == {"cls_attention"}
    assert get_method("mmtok:visual=vision").needs == {"vision"}


# ------------------------------------------------------------------- budget, determinism


@pytest.mark.parametrize("name", BEFORE)
@pytest.mark.parametrize("with_text", [False, True])
def test_before_budget_is_exact(name, with_text):
    x, _ = _clusters()
    n = x.shape[0]
    text = torch.randn(5, D, generator=_gen(1)) if with_text else None
    cls = [torch.rand(n, generator=_gen(2))]
    for count in (1, 2, 7, n - 1, n):
        mask = get_method(name).select(_visual(x, count, text=text, cls_attention=cls))
        assert mask.shape == (n,) and mask.dtype == torch.bool and int(mask.sum()) == count


@pytest.mark.parametrize("name", BEFORE)
def test_half_precision_tokens_give_the_float32_choice(name):
    x, _ = _clusters(noise=0.3)
    x = x.bfloat16()
    text = x[5:6].clone()
    low = get_method(name).select(_visual(x, 6, text=text))
    assert torch.equal(low, get_method(name).select(_visual(x.float(), 6, text=text.float())))


@pytest.mark.parametrize("name", INSIDE)
def test_inside_budget_is_exact(name):
    for count in (1, 2, 11, 31, 32):
        mask = get_method(name).select(_inside(32, count))
        assert mask.shape == (32,) and int(mask.sum()) == count


@pytest.mark.parametrize("name", BEFORE)
def test_before_is_deterministic_whatever_the_generator(name):
    x, _ = _clusters(seed=3, noise=0.5)
    text = torch.randn(4, D, generator=_gen(4))
    a = get_method(name).select(_visual(x, 9, text=text, generator=_gen(0)))
    b = get_method(name).select(_visual(x.clone(), 9, text=text.clone(), generator=_gen(99)))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", INSIDE)
def test_inside_is_deterministic_whatever_the_generator(name):
    a = get_method(name).select(_inside(count=6, seed=5, generator=_gen(0)))
    b = get_method(name).select(_inside(count=6, seed=5, generator=_gen(7)))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------- dart


def _duplicates():
    """Token 0: the pivot (largest norm); tokens 1-5 near copies of it; 6-9 distinct."""
    g = _gen(6)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    pivot = basis[0] * 10
    copies = basis[0] + 0.02 * torch.randn(5, D, generator=g)
    distinct = basis[1:5] * 2
    return torch.cat([pivot[None], copies, distinct])


def test_dart_keeps_the_pivot_and_the_tokens_it_does_not_duplicate():
    x = _duplicates()
    assert _kept(get_method("dart:pivots=1").select(_visual(x, 5))) == [0, 6, 7, 8, 9]
    # inside the LLM it reads the hidden states the same way
    inside = _inside(10, 5, hidden=x, hidden_in=x.clone(), text_attention=torch.rand(10),
                     last_attention=torch.rand(10), visual_attention=torch.rand(10))
    assert _kept(get_method("dart:pivots=1").select(inside)) == [0, 6, 7, 8, 9]


def test_dart_pivots_are_the_largest_norms():
    x = _duplicates()
    x[7] *= 20   # now the largest norm: a pivot as well
    kept = _kept(get_method("dart:pivots=2").select(_visual(x, 2)))
    assert kept == [0, 7]


# ---------------------------------------------------------------------------------- todre


def test_todre_k_center_keeps_one_token_per_cluster():
    x, label = _clusters()
    for method in ("todre", "todre:relevance=0.5"):       # no text: diversity only
        kept = _kept(get_method(method).select(_visual(x, K)))
        assert sorted(label[kept].tolist()) == list(range(K))


def _centred_clusters():
    """Like _clusters, with token 3 exactly at its cluster's centre (never the farthest)."""
    x, label = _clusters(noise=0.3)
    x[3] = x[label == 0].mean(0)
    return x, label


def test_todre_with_the_question_keeps_the_token_the_text_names():
    x, label = _centred_clusters()
    text = torch.cat([x[3:4] * 0.5, torch.zeros(1, D)])       # a token's direction (+ padding)
    without = _kept(get_method("todre").select(_visual(x, K + 1)))
    with_text = _kept(get_method("todre").select(_visual(x, K + 1, text=text)))
    assert 3 not in without and 3 in with_text
    assert len(with_text) == K + 1
    # the diverse part still covers every cluster: ceil(0.25 * 5) = 2 go to relevance
    assert len(set(label[with_text].tolist())) >= K - 1
    # budget 1, question given: the one token is the relevant one
    assert _kept(get_method("todre").select(_visual(x, 1, text=text))) == [3]


def test_todre_starts_from_the_cls_choice():
    x, label = _clusters()
    cls = torch.zeros(x.shape[0])
    cls[13] = 1.0
    assert _kept(get_method("todre").select(_visual(x, 1, cls_attention=[cls]))) == [13]


# ---------------------------------------------------------------------------------- mmtok


def test_mmtok_covers_every_cluster_without_text():
    x, label = _clusters()
    kept = _kept(get_method("mmtok").select(_visual(x, K)))
    assert sorted(label[kept].tolist()) == list(range(K))
    # without a question it is visual coverage alone: the same as giving the text no weight
    text = torch.randn(3, D, generator=_gen(8))
    assert torch.equal(get_method("mmtok").select(_visual(x, K)),
                       get_method("mmtok:text=0").select(_visual(x, K, text=text)))


def test_mmtok_with_the_question_covers_the_text_too():
    x, label = _clusters(noise=0.3)
    j = 21                                   # a token of cluster 2, not its most central one
    text = x[j:j + 1].clone()
    without = _kept(get_method("mmtok").select(_visual(x, K)))
    with_text = _kept(get_method("mmtok").select(_visual(x, K, text=text)))
    assert j not in without and j in with_text
    assert sorted(label[with_text].tolist()) == list(range(K))  # still one per cluster
    assert _kept(get_method("mmtok").select(_visual(x, 1, text=text))) == [j]


def test_mmtok_visual_coverage_in_the_vision_space():
    x, label = _clusters()
    shuffled = x[torch.randperm(x.shape[0], generator=_gen(9))]  # features carry no clusters
    kept = _kept(get_method("mmtok:visual=vision").select(_visual(shuffled, K, vision=x)))
    assert sorted(label[kept].tolist()) == list(range(K))
    with pytest.raises(UsageError, match="visual=features"):
        get_method("mmtok:visual=vision").select(_visual(x, K))


# -------------------------------------------------------------------------------- recover


def _norms():
    """Tokens of norms 1..16 (token i has norm i+1) in random directions."""
    x = torch.nn.functional.normalize(torch.randn(16, D, generator=_gen(10)), dim=-1)
    return x * torch.arange(1, 17, dtype=torch.float32)[:, None]


def test_recover_picks_by_norm_then_recovers_what_the_text_names():
    x = _norms()
    assert _kept(get_method("recover").select(_visual(x, 4))) == [12, 13, 14, 15]
    text = x[2:3] * 3                                   # names the low-norm token 2
    kept = _kept(get_method("recover").select(_visual(x, 4, text=text)))
    assert kept[:1] == [2] and kept[-2:] == [14, 15] and len(kept) == 4
    agnostic = get_method("recover:recover=0").select(_visual(x, 4, text=text))
    assert _kept(agnostic) == [12, 13, 14, 15]


def test_recover_uses_the_cls_attention_when_given():
    x = _norms()
    cls = torch.zeros(16)
    cls[[0, 5, 9]] = torch.tensor([0.5, 0.3, 0.2])
    assert _kept(get_method("recover").select(_visual(x, 3, cls_attention=[cls]))) == [0, 5, 9]
    assert _kept(get_method("recover:score=norm").select(
        _visual(x, 3, cls_attention=[cls]))) == [13, 14, 15]
    with pytest.raises(UsageError, match="score=norm"):
        get_method("recover:score=cls").select(_visual(x, 3))
    with pytest.raises(UsageError, match="layer"):
        get_method("recover:layer=3").select(_visual(x, 3, cls_attention=[cls]))


# ----------------------------------------------------------------------------------- fastv


def test_fastv_keeps_the_most_attended_tokens_from_the_chosen_queries():
    last = torch.zeros(12)
    last[[1, 4, 7]] = torch.tensor([0.2, 0.5, 0.3])
    text = torch.zeros(12)
    text[[0, 10, 11]] = torch.tensor([0.3, 0.3, 0.4])
    v = _inside(12, 3, last_attention=last, text_attention=text)
    assert _kept(get_method("fastv").select(v)) == [1, 4, 7]
    assert _kept(get_method("fastv:query=text").select(v)) == [0, 10, 11]
    v.count = 1
    assert _kept(get_method("fastv").select(v)) == [4]


# ------------------------------------------------------------------------------ transprune


def _transitions():
    """h_in random; tokens 2-3 grow (same direction), 6-7 turn (same norm), the rest stay;
    the text attends most to 10-11 (none first, so a zero score cannot pass by position)."""
    g = _gen(11)
    h_in = torch.randn(12, D, generator=g)
    h = h_in.clone()
    h[[2, 3]] *= 3
    turn = torch.randn(2, D, generator=g)
    norm = h_in[[6, 7]].norm(dim=-1, keepdim=True)
    h[[6, 7]] = torch.nn.functional.normalize(turn, dim=-1) * norm
    attn = torch.full((12,), 0.01)
    attn[[10, 11]] = 0.4
    return _inside(12, 2, hidden=h, hidden_in=h_in, text_attention=attn)


def test_transprune_scores_magnitude_direction_and_attention():
    v = _transitions()
    only = {"magnitude": [2, 3], "direction": [6, 7], "attention": [10, 11]}
    for key, expect in only.items():
        spec = "transprune:" + ",".join(f"{k}={int(k == key)}" for k in only)
        assert _kept(get_method(spec).select(v)) == expect, spec
    v.count = 6                               # the default weighs all three
    assert _kept(get_method("transprune").select(v)) == [2, 3, 6, 7, 10, 11]


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("spec", ["dart:pivots=0", "dart:pivots=1.5", "todre:relevance=2",
                                  "recover:recover=-0.1", "recover:score=mean",
                                  "mmtok:text=-1", "mmtok:visual=pixels", "fastv:query=middle",
                                  "transprune:magnitude=0,direction=0,attention=0",
                                  "transprune:attention=nan"])
def test_bad_settings_are_one_line_usage_errors(spec):
    with pytest.raises(UsageError) as err:
        get_method(spec)
    assert "\n" not in str(err.value)


def test_wrong_stage_or_missing_input_is_a_usage_error():
    x, _ = _clusters()
    for name in BEFORE[1:]:
        with pytest.raises(UsageError, match="stage='inside'"):
            get_method(name).select(_inside())
    for name in ("fastv", "transprune"):
        with pytest.raises(UsageError, match="stage='inside'"):
            get_method(name).select(_visual(x, 3))
    with pytest.raises(UsageError, match="text_attention"):
        get_method("fastv:query=text").select(_inside(text_attention=None))
    with pytest.raises(UsageError, match="last_attention"):
        get_method("fastv").select(_inside(last_attention=torch.rand(5)))
    with pytest.raises(UsageError, match="hidden_in"):
        get_method("transprune").select(_inside(hidden_in=None))
    for name in ("todre", "mmtok", "recover"):
        with pytest.raises(UsageError, match="text embeddings"):
            get_method(name).select(_visual(x, 3, text=torch.randn(2, D + 1)))
    for name in BEFORE:
        for count in (0, x.shape[0] + 1):
            with pytest.raises(UsageError, match="count"):
                get_method(name).select(_visual(x, count))


# ------------------------------------------------------------------ the shared selectors


def test_facility_location_is_greedy_coverage():
    # demand points 0-2 sit on candidate 0, point 3 on candidate 2; candidate 1 half-covers all
    sim = torch.tensor([[1.0, 0.5, -1.0], [1.0, 0.5, -1.0], [1.0, 0.5, -1.0], [-1.0, 0.5, 1.0]])
    assert _kept(facility_location(sim, 1)) == [0]
    assert _kept(facility_location(sim, 2)) == [0, 2]
    weight = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert _kept(facility_location(sim, 1, weight)) == [2]


def test_k_center_is_batched_and_starts_where_told():
    pts = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0], [-0.99, 0.1]])
    keep = k_center(torch.stack([pts, pts]), 3, torch.tensor([0, 2]))
    assert _kept(keep[0]) == [0, 2, 3] and keep[1].tolist() == [True, False, True, True, False]


def _plain_greedy(sim, count, weight):
    """Reference: every gain recomputed from scratch at every step (ranked as quantised,
    like every selector)."""
    cover = torch.full((sim.shape[0],), -1.0)
    keep = torch.zeros(sim.shape[1], dtype=torch.bool)
    for _ in range(count):
        gain = ((sim - cover[:, None]).clamp_min(0) * weight[:, None]).sum(0)
        j = int(quantise(torch.where(keep, float("-inf"), gain)).argmax())
        keep[j] = True
        cover = torch.maximum(cover, sim[:, j])
    return keep


def test_facility_location_updates_match_recomputing_every_gain():
    for seed in range(8):
        g = _gen(seed)
        n = 10 + 9 * seed
        x = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=-1)
        t = torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=-1)
        sim = torch.cat([x @ x.T, t @ x.T])
        weight = torch.cat([torch.full((n,), 1 / n), torch.full((3,), 0.4)])
        for count in (1, n // 3, n):
            assert torch.equal(facility_location(sim, count, weight),
                               _plain_greedy(sim, count, weight)), (seed, count)
