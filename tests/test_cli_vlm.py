"""``tokensieve vlm IMAGE --question Q``: answers with the small VLM, its tokens pruned."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tokensieve.cli import main
from tokensieve.cli.vlm import route


def test_route_makes_image_calls_the_ask_subcommand():
    assert route(["vlm", "a.png", "--question", "q"]) == ["vlm", "ask", "a.png", "--question", "q"]
    assert route(["vlm", "train", "--steps", "1"]) == ["vlm", "train", "--steps", "1"]
    assert route(["vlm", "--help"]) == ["vlm", "--help"]
    assert route(["compress", "vlm"]) == ["compress", "vlm"]


@pytest.fixture
def square(tmp_path):
    a = np.zeros((64, 64, 3), np.uint8)
    a[16:48, 16:48] = (255, 0, 0)
    path = tmp_path / "square.png"
    Image.fromarray(a).save(path)
    return path


def test_answers_with_the_budget_and_draws_the_kept_tokens(square, tmp_path, capsys):
    png = tmp_path / "kept.png"
    rc = main(["vlm", str(square), "--question", "What is in this picture?", "--count", "16",
               "--method", "random", "--png", str(png), "--json", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["answer"] and out["visual_tokens"] == 256 and out["kept"] == 16
    assert out["method"] == out["ran"] == "random"
    kept = out["kept_indices"]
    assert len(kept) == 16 and kept == sorted(set(kept))
    img = np.asarray(Image.open(png)).astype(float)
    bright = img.reshape(16, 14, 16, 14, 3).mean(axis=(1, 3, 4)).flatten()   # per token cell
    base = np.asarray(Image.open(square).convert("RGB").resize((224, 224))).astype(float)
    full = base.reshape(16, 14, 16, 14, 3).mean(axis=(1, 3, 4)).flatten()
    on = np.zeros(256, bool)
    on[kept] = True
    assert np.allclose(bright[on], full[on], atol=1) and np.allclose(bright[~on], 0.25 * full[~on],
                                                                     atol=1)


def test_the_default_says_what_it_ran(square, capsys):
    rc = main(["vlm", str(square), "--question", "What is in the top-left corner?", "--keep",
               "0.125", "--json", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and (out["method"], out["ran"], out["kept"]) == ("default", "learned", 32)


def test_bad_image_and_method_are_one_line_errors(square, tmp_path, capsys):
    assert main(["vlm", str(tmp_path / "nope.png"), "--question", "q"]) != 0
    err = capsys.readouterr().err
    assert "no such image file" in err and err.count("\n") == 1
    assert main(["vlm", str(square), "--question", "q", "--method", "nope"]) == 2
    assert "unknown VLM method" in capsys.readouterr().err
    assert main(["vlm", str(square), "--question", "  "]) != 0
    assert "--question is empty" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--context", "2"], ["--context", "1"], ["--context", "-3"],
                                  ["--weight-decay", "-0.1"], ["--epochs", "0"]])
def test_train_look_refuses_bad_settings_before_loading_anything(argv, capsys):
    assert main(["vlm", "train-look", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokensieve: error:") and err.count("\n") == 1
