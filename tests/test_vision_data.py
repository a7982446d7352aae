"""Image data: parsers on tiny synthetic inputs (offline), real data when it is already here."""

import base64
import gzip
import io
import json
import struct
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tokensieve.bench import vision_data as V
from tokensieve.bench.data import data_dir
from tokensieve.errors import TokensieveError


def _png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.uint8).tobytes()


def test_png_task_decodes_to_images_labels_and_class_names():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    names = ["cat", "dog", "ship"]
    task = {"examples": [{"input": _png_b64(img),
                          "target_scores": {n: int(n == names[lab]) for n in names}}
                         for img, lab in zip(imgs, [2, 0, 1], strict=True)]}
    images, labels, classes = V.decode_png_task(task)
    np.testing.assert_array_equal(images, imgs)
    assert labels.tolist() == [2, 0, 1] and classes == names
    task["examples"][1]["target_scores"]["dog"] = 1  # two gold classes
    with pytest.raises(TokensieveError, match="example 1.*one-hot"):
        V.decode_png_task(task)


def test_grey_png_becomes_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    task = {"examples": [{"input": _png_b64(grey), "target_scores": {"a": 1, "b": 0}}]}
    images, _, _ = V.decode_png_task(task)
    assert images.shape == (1, 3, 4, 3) and (images[0, ..., 1] == grey).all()


def test_idx_files_gzipped_or_not(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    np.testing.assert_array_equal(V.read_idx(tmp_path / "a-idx3-ubyte"), images)
    np.testing.assert_array_equal(V.read_idx(tmp_path / "a-idx3-ubyte.gz"), images)
    with pytest.raises(TokensieveError, match="not an IDX file"):
        V.parse_idx(b"\x1f\x8b\x08\x00rest")
    with pytest.raises(TokensieveError, match="header says"):
        V.parse_idx(_idx(images)[:-1])


def test_fashion_mnist_from_a_fake_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 40), ("t10k", 20)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    monkeypatch.setenv("TOKENSIEVE_FASHION_MNIST", str(tmp_path))
    train, evals = V.fashion_mnist("train", seed=3), V.fashion_mnist("eval", seed=3)
    assert len(train) == len(evals) == 10 and train.images.shape == (10, 28, 28, 3)
    assert np.bincount(evals.labels).tolist() == [1] * 10
    assert (train.images[..., 0] == train.images[..., 2]).all()
    assert train.class_names[9] == "Ankle boot"
    assert len(V.fashion_mnist("train", pool="official")) == 40


def test_missing_fashion_mnist_names_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_FASHION_MNIST", str(tmp_path / "nothing"))
    with pytest.raises(TokensieveError, match="apt-get install -y dataset-fashion-mnist"):
        V.fashion_mnist("train")


def test_stratified_split_is_deterministic_disjoint_and_balanced():
    labels = np.repeat(np.arange(4), 10)
    tr, ev = V.stratified_split(labels, 0.3, seed=5)
    tr2, ev2 = V.stratified_split(labels, 0.3, seed=5)
    assert tr.tolist() == tr2.tolist() and ev.tolist() == ev2.tolist()
    assert not set(tr) & set(ev) and len(tr) + len(ev) == 40
    assert np.bincount(labels[ev]).tolist() == [3] * 4
    assert V.stratified_split(labels, 0.3, seed=6)[1].tolist() != ev.tolist()


def test_image_set_helpers():
    s = V.ImageSet(np.zeros((6, 2, 2, 3), np.uint8), [0, 1, 0, 1, 0, 1], ["a", "b"], "toy")
    assert len(s.per_class(2)) == 4 and sorted(s.per_class(2).labels.tolist()) == [0, 0, 1, 1]
    assert [len(y) for _, y in s.batches(4)] == [4, 2]
    with pytest.raises(ValueError, match="uint8"):
        V.ImageSet(np.zeros((1, 2, 2, 3)), [0], ["a"], "bad")


def test_to_pixel_values_resizes_normalises_and_pads():
    white = np.full((2, 8, 8, 3), 255, np.uint8)
    x = V.to_pixel_values(white, 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)
    wide = np.full((1, 4, 8, 3), 255, np.uint8)  # pad: longer side to 16, black above/below
    x = V.to_pixel_values(wide, 16, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(x[0, :, 4:12], torch.ones(3, 8, 16), atol=1e-5)
    assert (x[0, :, :4] == 0).all() and (x[0, :, 12:] == 0).all()
    x = V.to_pixel_values(wide, 16, mean=(0, 0, 0), std=(1, 1, 1), fit="stretch")
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)
    grey = np.full((3, 5, 5), 128, np.uint8)
    x = V.to_pixel_values(grey, 10, resample="bilinear")
    assert x.shape == (3, 3, 10, 10)
    mixed = V.to_pixel_values([white[0], grey[0]], 12)
    assert mixed.shape == (2, 3, 12, 12)


def test_imagenet_photos_from_a_fake_wheel(tmp_path):
    wheel = tmp_path / "foolbox-3.3.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for k, (label, size) in enumerate([(243, (40, 40)), (541, (60, 40))]):
            buf = io.BytesIO()
            Image.new("RGB", size, (k * 100, 50, 50)).save(buf, format="JPEG")
            zf.writestr(f"foolbox/data/imagenet_{k:02d}_{label}.jpg", buf.getvalue())
        zf.writestr("foolbox/data/cifar10_00_3.png", b"ignored")
    photos = V.read_imagenet_photos(wheel, size=40)
    assert photos.images.shape == (2, 40, 40, 3) and photos.labels.tolist() == [243, 541]
    assert len(photos.class_names) == 1000


def test_easy_vqa_labels_from_questions():
    questions = [
        ["what color is the circle?", "yellow", 0],  # wh: answer + the shape named
        ["is there a triangle?", "no", 0],
        ["what is the green shape?", "rectangle", 1],
        ["is no blue shape present?", "yes", 2],  # negated: says nothing positive
        ["does the image not contain a red shape?", "no", 2],  # = it contains a red shape
        ["what shape is present?", "triangle", 2],
        ["what shape is in the image?", "circle", 3],  # colour unknown: left out
        ["is there a gray shape?", "yes", 4], ["is there a teal shape?", "yes", 4],
        ["what shape is present?", "circle", 4],  # two colours: ambiguous, left out
    ]
    assert V.easy_vqa_labels(questions) == {0: ("yellow", "circle"), 1: ("green", "rectangle"),
                                            2: ("red", "triangle")}


def _fake_easy_vqa_wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        for part, qs in (("train", [["what color is the circle?", "red", 0],
                                    ["what is the blue shape?", "triangle", 1]]),
                         ("test", [["what is the color of the rectangle?", "teal", 0]])):
            zf.writestr(f"easy_vqa/data/{part}/questions.json", json.dumps(qs))
            for k in range(len(qs)):
                buf = io.BytesIO()
                Image.new("RGB", (64, 64), (10 * k, 20, 30)).save(buf, format="PNG")
                zf.writestr(f"easy_vqa/data/{part}/images/{k}.png", buf.getvalue())
    return path


def test_easy_vqa_from_a_fake_wheel(tmp_path):
    ds = V.read_easy_vqa(_fake_easy_vqa_wheel(tmp_path / "easy_vqa-1.0-py3-none-any.whl"))
    assert ds.images.shape == (3, 64, 64, 3) and ds.name == "easy_vqa"
    assert [ds.class_names[k] for k in ds.labels] == ["red circle", "blue triangle",
                                                      "teal rectangle"]
    assert ds.meta["files"] == ["train/0.png", "train/1.png", "test/0.png"]
    assert len(ds.class_names) == 24 and ds.images[1, 0, 0].tolist() == [10, 20, 30]


def test_missing_easy_vqa_wheel_is_one_line(tmp_path, monkeypatch):
    from tokensieve.assets import downloads

    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path))
    monkeypatch.setattr(downloads, "pip_sources",
                        lambda: downloads.PipSources(index_urls=[], timeout=5))
    with pytest.raises(TokensieveError) as exc:
        V.easy_vqa("train")
    msg = str(exc.value)
    assert "\n" not in msg and "easy-vqa==1.0" in msg and str(tmp_path / "downloads") in msg


def _easy_vqa_here() -> bool:
    from tokensieve.bench import data as D

    if (data_dir() / "downloads" / "easy_vqa-1.0-py3-none-any.whl").is_file():
        return True
    for url in D.pip_sources().index_urls:
        try:
            D._read(url.rstrip("/") + "/easy-vqa/", D.pip_sources(), D._ACCEPT)
            return True
        except (urllib.error.URLError, OSError, FileNotFoundError):
            continue
    return False


@pytest.mark.skipif(not _easy_vqa_here(),
                    reason="the easy-vqa 1.0 wheel is neither cached nor on a reachable index")
def test_real_easy_vqa():
    full = V.easy_vqa("all")
    assert full.images.shape == (4422, 64, 64, 3) and len(full.class_names) == 24
    counts = np.bincount(full.labels, minlength=24)
    assert counts.min() >= 160 and counts.sum() == 4422
    train, evals = V.easy_vqa("train", seed=0), V.easy_vqa("eval", seed=0)
    assert len(train) + len(evals) == 4422 and np.bincount(evals.labels).min() >= 49
    assert np.bincount(train.labels).min() >= 113


_CIFAR = data_dir() / "vision" / "cifar10-test.npz"
_BIGBENCH = data_dir() / "downloads" / "bigbench-1.0.0.tar.gz"


@pytest.mark.skipif(not (_CIFAR.is_file() or _BIGBENCH.is_file()),
                    reason="neither the decoded CIFAR-10 cache nor the BIG-bench 1.0.0 archive "
                           "is in the data folder (the benchmark downloads it once)")
def test_real_cifar10():
    full = V.cifar10("all")
    assert full.images.shape == (10000, 32, 32, 3)
    assert np.bincount(full.labels).tolist() == [1000] * 10
    assert full.class_names == list(V.CIFAR10_CLASSES)
    train, evals = V.cifar10("train", seed=0), V.cifar10("eval", seed=0)
    assert len(train) == len(evals) == 5000
    assert np.bincount(evals.labels).tolist() == [500] * 10


@pytest.mark.skipif(not (V.fashion_mnist_folder() / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed ({V.FASHION_MNIST_APT})")
def test_real_fashion_mnist():
    test = V.fashion_mnist_part("test")
    assert test.images.shape == (10000, 28, 28, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert len(V.fashion_mnist("eval")) == 5000


@pytest.mark.skipif(not (data_dir() / "downloads" / "foolbox-3.3.4-py3-none-any.whl").is_file(),
                    reason="the foolbox 3.3.4 wheel is not in the data folder's downloads")
def test_real_imagenet_photos():
    photos = V.imagenet_photos()
    assert photos.images.shape == (20, 512, 512, 3)
    assert photos.labels[:3].tolist() == [243, 559, 438]
