"""The look head and the ``learned`` method: coordinates, exact budgets, the shipped head,
one-line errors, and distillation that really learns where a model looks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vlm_models import build

from tokensieve import vlm
from tokensieve.bench.vlm_eval import inputs_for
from tokensieve.bench.vlm_look import LookSet, _Recorder, fit, kl, validate
from tokensieve.errors import ModelNotFoundError, UsageError
from tokensieve.vlm.look_head import (
    HEAD_NAME,
    LookHead,
    coordinates,
    fingerprint,
    load_head,
    neighbourhood,
    pool_text,
    save_head,
)
from tokensieve.vlm.methods import Visual, get_method
from tokensieve.vlm.methods.learned import Learned, spread


def _visual(count, dim=8, n=16, grid=(4, 4), text=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Visual(features=torch.randn(n, dim, generator=g), count=count, grid=grid,
                  text=torch.randn(text, dim, generator=g) if text else None)


def test_coordinates_follow_the_grid_in_raster_order():
    c = coordinates(6, (2, 3))
    assert c.tolist() == [[0, 0], [0, .5], [0, 1], [1, 0], [1, .5], [1, 1]]
    flat = coordinates(5, None)
    assert flat[:, 0].tolist() == [0, .25, .5, .75, 1] and flat[:, 1].abs().sum() == 0
    assert coordinates(5, (2, 3)).shape == (5, 2)   # a grid that does not fit is ignored


def test_pool_text_is_mean_and_max_of_normalised_tokens():
    t = torch.tensor([[1., 2., 3.], [3., 2., 1.]])
    p = pool_text(t)
    normed = torch.nn.functional.layer_norm(t, (3,))
    assert torch.allclose(p, torch.cat([normed.mean(0), normed.amax(0)]))


@pytest.mark.parametrize("count", [1, 3, 8, 16])
@pytest.mark.parametrize("share", [1.0, 0.5, 0.0])
def test_exact_budget_and_share(count, share):
    torch.manual_seed(0)
    head = LookHead(8, hidden=16, heads=2)
    v = _visual(count)
    keep = Learned(head=head, share=share).select(v)
    assert keep.dtype == torch.bool and int(keep.sum()) == count
    if share == 1.0:   # exactly the head's top count
        top = head.scores(v.features, v.text, v.grid).topk(count).indices
        assert set(top.tolist()) == set(keep.nonzero().flatten().tolist())


def test_the_question_changes_what_is_kept():
    torch.manual_seed(1)
    head = LookHead(8, hidden=16, heads=2)
    a = Learned(head=head, share=1.0).select(_visual(4, seed=0))
    v = _visual(4, seed=0)
    v.text = -v.text * 3
    b = Learned(head=head, share=1.0).select(v)
    assert not torch.equal(a, b)


def test_spread_fills_evenly_among_the_rest():
    keep = torch.zeros(10, dtype=torch.bool)
    keep[0] = True
    out = spread(keep, 4)
    assert out.nonzero().flatten().tolist() == [0, 1, 5, 9]
    assert torch.equal(spread(out, 4), out)


def test_bad_settings_and_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="share"):
        get_method("learned:share=2")
    with pytest.raises(UsageError, match="question"):
        Learned(head=LookHead(8, 16, 2)).select(_visual(2, text=0))
    with pytest.raises(UsageError, match="8-wide.*train-look"):
        Learned(head=LookHead(8, 16, 2)).select(_visual(2, dim=12))
    with pytest.raises(ModelNotFoundError, match="train-look"):
        Learned(head=str(tmp_path)).select(_visual(2))
    for bad in ("learned:fallback=learned", "learned:fallback=default", "learned:fallback=fastv",
                "learned:fallback=nosuch", "learned:fallback=5"):
        with pytest.raises(UsageError):
            get_method(bad)
    with pytest.raises(UsageError, match="folder"):
        get_method("learned:head=5")
    assert get_method("default:fallback=none").fallback is None
    assert get_method("learned:fallback=dart").fallback.name == "dart"
    assert get_method("default").fallback.name == "todre" and get_method("learned").fallback is None
    with pytest.raises(UsageError, match="multiple of heads"):
        LookHead(8, hidden=10, heads=4)
    for bad in (-1, 1, 2, 4):
        with pytest.raises(UsageError, match="odd window"):
            LookHead(8, hidden=16, heads=2, context=bad)
    with pytest.raises(ModelNotFoundError) as info:
        Learned(head=str(tmp_path)).select(_visual(2, dim=12))
    assert "\n" not in str(info.value)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(2)
    head = LookHead(8, hidden=16, heads=2, freqs=3, context=3)
    save_head(tmp_path, head, {"depth": 0.5})
    loaded, record = load_head(tmp_path)
    assert record["depth"] == 0.5 and record["freqs"] == 3 and loaded.context == 3
    v = _visual(5)
    assert torch.equal(loaded.scores(v.features, v.text, v.grid),
                       head.eval().scores(v.features, v.text, v.grid))
    assert torch.equal(Learned(head=str(tmp_path)).select(v), Learned(head=head).select(v))


def test_neighbourhood_is_the_mean_over_the_window_inside_the_grid():
    x = torch.arange(16, dtype=torch.float32).reshape(16, 1).repeat(1, 2)
    x[:, 1] *= -1
    out = neighbourhood(x, coordinates(16, (4, 4)), 3)
    assert out.shape == (16, 2)
    assert out[0].tolist() == pytest.approx([2.5, -2.5])             # (0, 0): 0, 1, 4, 5
    assert out[5, 0] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
    assert out[15, 0] == pytest.approx(np.mean([10, 11, 14, 15]))
    # no grid: a window along the sequence
    line = neighbourhood(x, coordinates(16, None), 3)
    assert line[0, 0] == pytest.approx(0.5) and line[7, 0] == pytest.approx(7.0)
    # a batch of images gives each image its own windows
    both = neighbourhood(torch.stack([x, 2 * x]), coordinates(16, (4, 4)).expand(2, 16, 2), 3)
    assert torch.allclose(both[0], out) and torch.allclose(both[1], 2 * out)
    mixed = torch.stack([coordinates(16, (4, 4)), coordinates(16, (2, 8))])
    with pytest.raises(UsageError, match="one patch grid"):
        neighbourhood(torch.stack([x, x]), mixed, 3)


def test_context_lets_the_head_find_the_surroundings_of_a_marked_token():
    """The target covers the 3x3 window around one marked token: without context the
    head sees only the marker, with ``context=3`` it finds the whole window."""
    def data(n_items, seed, n=36, dim=16):
        g = torch.Generator().manual_seed(seed)
        marker = torch.tensor([2.0, -2.0]).repeat_interleave(dim // 2)
        ds = LookSet()
        for i in range(n_items):
            # a background that varies little inside an image, so a window's mean shows
            # whether the marker is in it
            f = torch.randn(dim, generator=g) + 0.2 * torch.randn(n, dim, generator=g)
            r, c = (int(t) for t in torch.randint(1, 5, (2,), generator=g))
            f[r * 6 + c] = marker
            target = torch.full((n,), 0.002)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    target[(r + dr) * 6 + c + dc] = 1.0
            ds.features.append(f.half())
            ds.coords.append(coordinates(n, (6, 6)))
            ds.image.append(i)
            ds.question.append(pool_text(torch.ones(2, dim)))
            ds.target.append(target / target.sum())
            ds.qtype.append("q")
        return ds

    train, dev = data(384, 0), data(64, 1)
    mass = {}
    for context in (0, 3):
        head, _ = fit(train, hidden=32, heads=2, context=context, epochs=30, lr=5e-3,
                      progress=False)
        mass[context] = validate(head, dev, counts=(9,))["all"]
    assert mass[3]["mass@9"] > 0.8 * mass[3]["best@9"]
    assert mass[3]["mass@9"] > mass[0]["mass@9"] + 0.2


def test_fingerprint_names_the_architecture():
    a, b = build("llava_clip"), build("qwen2_vl")
    fa, fb = fingerprint(a.model), fingerprint(b.model)
    assert fa.startswith("LlavaForConditionalGeneration:") and fa != fb
    assert fingerprint(build("llava_clip").model) == fa


@torch.no_grad()
def test_default_runs_the_shipped_head_on_the_small_vlm_and_todre_elsewhere():
    model, processor = vlm.load("default")
    head, record = load_head()
    assert record["fingerprint"] == fingerprint(model)
    img = np.zeros((224, 224, 3), dtype=np.uint8)
    img[:112, :112] = 255                               # something in the top-left corner
    inputs = inputs_for(processor, [img], ["What is in the top-left corner?"])

    def kept(method, **kw):
        with vlm.prune(model, method, keep=0.125, **kw) as r:
            model(**inputs)
        (rec,) = r.last
        return rec.method, rec.kept.tolist()

    used, idx = kept("default")
    assert used == "learned" and len(idx) == 32
    assert kept("learned") == (used, idx)
    # the head's own top 16 (share 0.5 of 32) are among the kept tokens
    text_pos = kept("learned:share=1")[1]
    assert len(set(text_pos) & set(idx)) >= 16
    assert kept("default", question_aware=False) == kept("todre", question_aware=False)
    assert kept("default", question_aware=False)[0] == "todre"
    threads = torch.get_num_threads()
    try:   # same tokens whatever the thread count
        torch.set_num_threads(1)
        one = kept("learned:share=1")
        torch.set_num_threads(2)
        assert kept("learned:share=1") == one
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["llava_clip", "idefics3"])
@torch.no_grad()
def test_elsewhere_default_is_todre_and_learned_refuses_in_one_line(kind):
    tiny = build(kind)
    inputs = tiny.inputs([(1, 3, 5)])
    with vlm.prune(tiny.model, "default", count=3) as r:
        tiny.model(**inputs)
    with vlm.prune(tiny.model, "todre", count=3) as t:
        tiny.model(**inputs)
    assert [x.method for x in r.last] == ["todre"] * len(r.last)
    assert [x.kept.tolist() for x in r.last] == [x.kept.tolist() for x in t.last]
    with pytest.raises(UsageError, match="train-look") as info:
        with vlm.prune(tiny.model, "learned", count=3):
            tiny.model(**inputs)
    assert "\n" not in str(info.value)


def test_a_model_of_the_same_width_but_another_architecture_is_refused():
    _, record = load_head()
    v = _visual(8, dim=576, n=256, grid=(16, 16), text=5)
    v.model = record["fingerprint"]
    assert int(get_method("learned").select(v).sum()) == 8
    assert get_method("default").used() == "learned"
    v.model = "Idefics3ForConditionalGeneration:576:30:49280:idefics3:768:64"   # SmolVLM-like
    with pytest.raises(UsageError, match="trained for LlavaForConditionalGeneration"):
        get_method("learned").select(v)
    default = get_method("default")
    assert torch.equal(default.select(v), get_method("todre").select(v))
    assert default.used() == "todre"


def test_the_shipped_head_fits_the_small_vlm():
    head, record = load_head()
    assert head.dim == 576   # SmolLM2-135M's width
    assert record["model"] == "LlavaForConditionalGeneration" and 0 < record["depth"] <= 1
    valid = record["valid"]["all"]
    # on the dev split it holds more of the deep layer's attention than random tokens do
    assert valid["mass@32"] > 2 * valid["random@32"]
    meta = json.loads((load_head.__globals__["DATA_DIR"] / f"{HEAD_NAME}.json").read_text())
    assert meta["dim"] == 576


def _synthetic(n_items, seed, n=16, dim=8):
    """Questions that name a quadrant of a 4x4 grid (one-hot in the text); the target puts
    its attention on that quadrant."""
    g = torch.Generator().manual_seed(seed)
    ds = LookSet()
    quads = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    for i in range(n_items):
        ds.features.append(torch.randn(n, dim, generator=g).half())
        ds.coords.append(coordinates(n, (4, 4)))
        q = int(torch.randint(4, (1,), generator=g))
        text = torch.randn(3, dim, generator=g) * 0.1
        text[:, q] += 3.0
        target = torch.full((n,), 0.01)
        target[quads[q]] = 1.0
        ds.image.append(i)
        ds.question.append(pool_text(text))
        ds.target.append(target / target.sum())
        ds.qtype.append(f"q{q}")
    return ds


def test_fit_learns_where_the_attention_goes():
    train, dev = _synthetic(256, 0), _synthetic(64, 1)
    head, curve = fit(train, hidden=32, heads=2, epochs=40, lr=5e-3, batch=32, progress=False)
    assert curve[-1][1] < 0.5 * curve[0][1]
    row = validate(head, dev, counts=(4,))["all"]
    assert row["random@4"] == 0.25
    assert row["mass@4"] > 0.8 * row["best@4"]      # finds the named quadrant
    untrained = validate(LookHead(8, 32, 2), dev, counts=(4,))["all"]
    assert untrained["mass@4"] < 0.6 * row["mass@4"]
    assert float(kl(torch.zeros(2, 4), torch.full((2, 4), 0.25))) == pytest.approx(0, abs=1e-6)


@torch.no_grad()
def test_recorder_targets_are_the_probe_of_all_tokens():
    tiny = build("llava_clip")
    inputs = tiny.row(tiny.inputs([(1, 3, 5)]), 0)
    rec = _Recorder(0.5)
    with vlm.prune(tiny.model, rec, count=1):
        tiny.model(**inputs)
    (v, att), = rec.rows
    assert att.shape == (v.n,) and torch.allclose(att, v.probe(torch.arange(v.n), 0.5).float())


@pytest.mark.parametrize("kind", ["llava_clip", "qwen2_vl"])
@torch.no_grad()
def test_runs_in_generate_with_a_head_of_the_models_width(kind):
    tiny = build(kind)
    model = tiny.model
    inputs = tiny.inputs([(1, 3, 5), (2, 4, 6)])
    torch.manual_seed(0)
    method = Learned(head=LookHead(model.get_input_embeddings().embedding_dim, 16, 2))
    with vlm.prune(model, method, count=3) as r:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert [len(rec.kept) for rec in r.last] == [3] * len(r.last)
    with pytest.raises(UsageError, match="question"):
        with vlm.prune(model, method, count=3, question_aware=False):
            pass


def test_targets_are_cached_by_data_depth_and_weights(tmp_path, monkeypatch):
    from tokensieve.bench import vlm_look

    calls = []

    def fake_collect(model, processor, data, *, depth, progress):
        calls.append(depth)
        return _synthetic(3, len(calls))

    class Data:
        def key(self):
            return "data-1"

    monkeypatch.setattr(vlm_look, "collect", fake_collect)
    model = build("llava_clip").model
    a = vlm_look.cached_collect(model, None, Data(), depth=0.5, folder=tmp_path)
    b = vlm_look.cached_collect(model, None, Data(), depth=0.5, folder=tmp_path)
    assert calls == [0.5] and len(b) == 3
    assert all(torch.equal(x, y) for x, y in zip(a.target, b.target, strict=True))
    assert b.qtype == a.qtype and b.image == a.image
    vlm_look.cached_collect(model, None, Data(), depth=0.7, folder=tmp_path)
    assert calls == [0.5, 0.7]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)          # a retrained model misses the cache
    vlm_look.cached_collect(model, None, Data(), depth=0.5, folder=tmp_path)
    assert calls == [0.5, 0.7, 0.5]


def test_fit_refuses_images_of_different_token_counts_in_one_line():
    ds = _synthetic(2, 0)
    ds.features[1] = ds.features[1][:8]
    ds.coords[1] = ds.coords[1][:8]
    with pytest.raises(UsageError, match="one visual token count") as info:
        fit(ds, epochs=1, progress=False)
    assert "\n" not in str(info.value)
