"""The vision CLI on a local model folder, and the benchmark's probe, work count and report
(no downloads: a tiny random DINOv2 saved to a temporary folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vision_models import build

from tokensieve import vision
from tokensieve.bench.probe import train_probe
from tokensieve.bench.vision_bench import _token_layers, run_features
from tokensieve.bench.vision_report import markdown, plot_accuracy
from tokensieve.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, _ = build("dinov2", image_size=224, patch=14)
    folder = tmp_path_factory.mktemp("tiny-dinov2")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_vision_cli_reduces_an_image_file(model_dir, image_file, capsys):
    assert main(["vision", str(image_file), "--model", str(model_dir), "--keep", "0.25",
                 "--method", "tome", "--json"]) == 0
    [res] = json.loads(capsys.readouterr().out)
    assert res["patches"] == 256 and res["patches_kept"] == 64 and res["prefix"] == 1
    assert len(res["source"]) == 256 and max(res["source"]) == 63
    assert sum(res["sizes"]) == 256  # tome merges: every patch lands in a token
    assert 0 < res["cosine"] <= 1.0001


def test_vision_cli_bad_input_is_one_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["vision", str(bad), "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an image Pillow can read" in err
    assert main(["vision", str(tmp_path / "missing.png"), "--model", str(model_dir)]) == 1
    assert "no such image file" in capsys.readouterr().err
    assert main(["vision", str(bad), "--keep", "2"]) == 2
    assert main(["vision", str(bad), "--model", str(tmp_path / "nowhere")]) == 1


def test_probe_learns_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 4
    labels = torch.arange(3).repeat_interleave(40)
    feats = centers[labels] + torch.randn(120, 16, generator=g)
    probe = train_probe(feats, labels)
    assert (probe.predict(feats) == labels).float().mean() == 1.0
    shuffled = labels[torch.randperm(120, generator=g)]
    assert (train_probe(feats, shuffled).predict(feats) == labels).float().mean() < 0.7


def test_work_counts_token_layers():
    model, _ = build("vit")  # 3 blocks, 16 patches + CLS
    x = torch.randn(2, 3, 32, 32)
    for at, keep, expected in ((0, 0.5, 17 + 9 + 9), (2, 0.5, 17 * 3), ([0, 1], 0.25, 17 + 9 + 5)):
        with torch.no_grad(), vision.reduce(model, "tome", keep=keep, at=at) as r:
            model(pixel_values=x)
        assert _token_layers(r, 3) == expected
    feats, work = run_features(model, x, "tome", 0.5, at=0, batch=1)
    assert feats.shape == (2, 64) and work == pytest.approx((17 + 9 + 9) / 51)
    full, one = run_features(model, x, None, 1.0)
    assert one == 1.0 and not torch.equal(full, feats)


def test_report_shows_every_cell(tmp_path):
    rows = [dict(dataset="cifar10", method="full", keep=1.0, at=None, accuracy=0.8, work=1.0,
                 n=100, sem_vs_full=0.0, cos=1.0)]
    for m, acc in (("default", 0.78), ("random", 0.6)):
        rows.append(dict(dataset="cifar10", method=m, keep=0.5, at="default", accuracy=acc,
                         work=0.6, n=100, sem_vs_full=0.02, cos=0.9))
    results = {"meta": dict(model="m", split="test", default_method="informed",
                            default_at=[2], image_size=168, probe_per_class=10,
                            eval_per_class=10, photo_size=518, threads=2),
               "accuracy": rows,
               "speed": [dict(batch=b, method=m, keep=k, speedup=s, images_per_s=3.0)
                         for b in (1, 32) for m, k, s in (("full", 1.0, 1.0),
                                                          ("default", 0.5, 1.7))]}
    md = markdown(results)
    assert "| default | 97.5 ± 2.5 | 0.60 |" in md
    assert "| random | 75.0 ± 2.5 | 0.60 |" in md
    assert "| default | 0.5 | 1.70 | 1.70 |" in md
    assert plot_accuracy(results, tmp_path).stat().st_size > 1000


def test_quick_mode_and_defaults_do_not_need_bigbench():
    """CIFAR-10 comes only from the BIG-bench archive, which the index no longer serves: the
    quick run uses easy-VQA, and the defaults put the fetchable sets first."""
    from tokensieve.bench.vision_bench import DATASETS, parse

    assert parse(["--quick"]).datasets == ["easy_vqa"]
    assert parse([]).datasets == ["easy_vqa", "fashion_mnist", "cifar10"]
    assert set(DATASETS) == {"easy_vqa", "fashion_mnist", "cifar10"}


def test_a_missing_dataset_is_skipped_with_one_line(monkeypatch, capsys):
    from tokensieve.bench import vision_bench
    from tokensieve.errors import TokensieveError

    def missing(split, seed=0):
        raise TokensieveError("the BIG-bench 1.0.0 source archive is not here")

    monkeypatch.setitem(vision_bench.DATASETS, "cifar10", missing)
    monkeypatch.setitem(vision_bench.DATASETS, "fashion_mnist", lambda split, seed=0: None)
    assert vision_bench.available_datasets(["cifar10", "fashion_mnist"]) == ["fashion_mnist"]
    err = capsys.readouterr().err.strip()
    assert err == ("tokensieve: skipping dataset cifar10: the BIG-bench 1.0.0 source archive "
                   "is not here")
