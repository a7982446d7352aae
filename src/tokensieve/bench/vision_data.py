"""Image data for the vision-token benchmark, from files that ship in packages (no hub).

- easy-VQA (5,000 64x64 RGB images of one coloured shape each): the ``easy-vqa`` 1.0 wheel
  (MIT), fetched with its sha256 pinned and read from the zip, never installed. The labels
  come from the dataset's own questions and answers (colour and shape); the 4,422 images
  whose colour and shape both follow from them form 24 classes "<colour> <shape>".
  Decoded once into ``data_dir()/vision/easy-vqa.npz``.
- Fashion-MNIST (28x28 grey, 60,000 train + 10,000 test): the Debian package
  ``dataset-fashion-mnist`` (gzipped IDX files in /usr/share/datasets/fashion-mnist/).
- CIFAR-10 test set (10,000 32x32 RGB images, 1,000 per class), only where the BIG-bench
  1.0.0 source archive is already in the downloads folder (the package index no longer
  serves it): its task ``cifar10_classification/base64/task.json``, one example per image:
  ``input`` is a base64 PNG, ``target_scores`` a one-hot dict over the ten class names.
  Decoded once into ``data_dir()/vision/cifar10-test.npz``.
- ImageNet photos: the 20 JPEGs (ImageNet validation-style photos, label = class index in the
  file name ``imagenet_<k>_<label>.jpg``) in the ``foolbox==3.3.4`` wheel, read from the zip.

``easy_vqa``, ``cifar10`` and ``fashion_mnist`` split a pool of images into a probe-train
and an eval part, stratified per class and fixed by the seed (see :func:`stratified_split`).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import struct
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokensieveError
from .data import bigbench_archive, data_dir, package_file

CIFAR10_MEMBER = "bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
FOOLBOX = "foolbox"
FOOLBOX_VERSION = "3.3.4"
FOOLBOX_SHA256 = "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"
_FOOLBOX_IMAGENET = re.compile(r"foolbox/data/imagenet_(\d+)_(\d+)\.jpe?g$")
EASY_VQA = "easy-vqa"
EASY_VQA_VERSION = "1.0"
EASY_VQA_SHA256 = "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f"
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
EASY_VQA_CLASSES = tuple(f"{c} {s}" for c in EASY_VQA_COLOURS for s in EASY_VQA_SHAPES)
_EASY_VQA_IMAGE = re.compile(r"easy_vqa/data/(train|test)/images/(\d+)\.png$")
SPLITS = ("train", "eval", "all")


@dataclass
class ImageSet:
    """Images (N x H x W x 3, uint8, RGB), integer labels indexing ``class_names``, and a name."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N x H x W x 3, got {self.images.dtype} "
                             f"{self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, index, name: str | None = None) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[index], self.labels[index], list(self.class_names),
                        name or self.name, dict(self.meta))

    def per_class(self, n: int, seed: int = 0) -> ImageSet:
        """At most ``n`` images of each class, drawn by ``seed`` (kept in the original order)."""
        rng = np.random.default_rng(seed)
        keep = []
        for c in np.unique(self.labels):
            idx = np.flatnonzero(self.labels == c)
            keep.append(np.sort(rng.permutation(idx)[:n]))
        return self.subset(np.sort(np.concatenate(keep)) if keep else [],
                           f"{self.name}[{n}/class]")

    def batches(self, batch_size: int):
        """(images, labels) in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]


def stratified_split(labels, eval_fraction: float = 0.5,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probe-train indices, eval indices): within each class a seeded permutation, the first
    ``round(eval_fraction * n_class)`` to eval; both sorted. The same labels and seed always
    give the same split."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, evals = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(eval_fraction * len(idx)))
        evals.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(evals))


def _take_split(full: ImageSet, split: str, seed: int, eval_fraction: float) -> ImageSet:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split == "all":
        return full
    train, evals = stratified_split(full.labels, eval_fraction, seed)
    out = full.subset(train if split == "train" else evals, f"{full.name}:{split}")
    out.meta.update(split=split, seed=seed, eval_fraction=eval_fraction)
    return out


# --------------------------------------------------------------------------- CIFAR-10


def decode_png_task(task: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N x H x W x 3 uint8, labels, class names) from a BIG-bench image task whose
    examples hold a base64 PNG as ``input`` and a one-hot ``target_scores`` dict. Class order
    is the order of the first example's ``target_scores``."""
    from PIL import Image

    examples = task["examples"]
    if not examples:
        raise TokensieveError("the task has no examples")
    names = list(examples[0]["target_scores"])
    images, labels = [], []
    for k, ex in enumerate(examples):
        scores = ex["target_scores"]
        if list(scores) != names or sorted(scores.values()) != [0] * (len(names) - 1) + [1]:
            raise TokensieveError(f"example {k}: target_scores is not one-hot over {names}")
        with Image.open(io.BytesIO(base64.b64decode(ex["input"], validate=True))) as img:
            images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        labels.append(names.index(max(scores, key=scores.get)))
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _save_npz(path: Path, **arrays) -> None:
    """Written under a temporary name, then renamed (never a half-written cache file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_npz(path: Path, name: str) -> ImageSet:
    with np.load(path, allow_pickle=False) as z:
        return ImageSet(z["images"], z["labels"], [str(c) for c in z["class_names"]], name)


def cifar10_test_set() -> ImageSet:
    """All 10,000 CIFAR-10 test images (grouped by class, as BIG-bench stores them)."""
    cached = data_dir() / "vision" / "cifar10-test.npz"
    if not cached.is_file():
        archive = bigbench_archive()
        with tarfile.open(archive, "r:gz") as tar:
            member = next((m for m in tar if m.name.endswith(CIFAR10_MEMBER)), None)
            if member is None:
                raise TokensieveError(f"{archive.name} has no {CIFAR10_MEMBER}")
            task = json.load(tar.extractfile(member))
        images, labels, names = decode_png_task(task)
        if images.shape != (10000, 32, 32, 3) or tuple(names) != CIFAR10_CLASSES:
            raise TokensieveError(f"unexpected CIFAR-10 task: {images.shape}, classes {names}")
        _save_npz(cached, images=images, labels=labels, class_names=np.asarray(names))
    return _load_npz(cached, "cifar10")


def cifar10(split: str = "train", seed: int = 0, eval_fraction: float = 0.5) -> ImageSet:
    """CIFAR-10 test images split into probe-train / eval (stratified, by seed): with the
    default 0.5, 5,000 each (500 per class); ``split="all"`` gives all 10,000."""
    return _take_split(cifar10_test_set(), split, seed, eval_fraction)


# --------------------------------------------------------------------------- easy-VQA


def easy_vqa_labels(questions: list) -> dict[int, tuple[str, str]]:
    """{image id: (colour, shape)} from easy-VQA's ``[question, answer, image id]`` triples:
    a wh-answer names one attribute and the question the other ("what color is the circle?"
    -> yellow); a yes/no answer affirms what the question names unless it is negated
    ("is there not a ..." / "is no ..."). Images whose colour or shape stays unknown or
    ambiguous are left out."""
    shapes: dict[int, set] = {}
    colours: dict[int, set] = {}
    for entry in questions:
        question, answer, image = entry
        words = re.findall(r"[a-z]+", str(question).lower())
        if answer in ("yes", "no"):
            if (answer == "yes") == ("not" in words or "no" in words):
                continue  # the named attribute is absent: says nothing positive
        else:
            words.append(str(answer))
        for w in words:
            if w in EASY_VQA_SHAPES:
                shapes.setdefault(int(image), set()).add(w)
            elif w in EASY_VQA_COLOURS:
                colours.setdefault(int(image), set()).add(w)
    return {i: (min(colours[i]), min(shapes[i])) for i in shapes
            if len(shapes[i]) == 1 and len(colours.get(i, ())) == 1}


def read_easy_vqa(wheel: Path | str) -> ImageSet:
    """The labelled easy-VQA images of a wheel (train part first, then test, by image id)."""
    from PIL import Image

    images, labels, files = [], [], []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for part in ("train", "test"):
            qname = f"easy_vqa/data/{part}/questions.json"
            if qname not in names:
                raise TokensieveError(f"{Path(wheel).name} holds no {qname}")
            found = _read_json_member(zf, qname)
            for image, (colour, shape) in sorted(easy_vqa_labels(found).items()):
                name = f"easy_vqa/data/{part}/images/{image}.png"
                if name not in names:
                    raise TokensieveError(f"{Path(wheel).name} holds no {name}")
                with Image.open(io.BytesIO(zf.read(name))) as img:
                    images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
                labels.append(EASY_VQA_CLASSES.index(f"{colour} {shape}"))
                files.append(f"{part}/{image}.png")
    if not images:
        raise TokensieveError(f"{Path(wheel).name} holds no labelled easy-VQA image")
    return ImageSet(np.stack(images), np.asarray(labels), list(EASY_VQA_CLASSES), "easy_vqa",
                    {"files": files})


def _read_json_member(zf: zipfile.ZipFile, name: str, limit: int = 32 << 20):
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise TokensieveError(f"{name} is {info.file_size} bytes (more than {limit})")
    return json.loads(zf.read(name))


def easy_vqa_wheel() -> Path:
    """The pinned easy-vqa 1.0 wheel in the downloads folder (fetched once, never installed)."""
    try:
        return package_file(EASY_VQA, EASY_VQA_VERSION, kind="wheel", sha256=EASY_VQA_SHA256,
                            folder=data_dir() / "downloads")
    except TokensieveError as exc:
        if "sha256" in str(exc):
            raise
        raise TokensieveError(
            f"easy-VQA needs the easy-vqa {EASY_VQA_VERSION} wheel from the package index "
            f"(pip download --no-deps -d {data_dir() / 'downloads'} "
            f"easy-vqa=={EASY_VQA_VERSION}): {str(exc).split(';')[0]}") from None


def easy_vqa_set() -> ImageSet:
    """All labelled easy-VQA images (4,422 of the 5,000), decoded once into the cache."""
    cached = data_dir() / "vision" / "easy-vqa.npz"
    if not cached.is_file():
        full = read_easy_vqa(easy_vqa_wheel())
        _save_npz(cached, images=full.images, labels=full.labels,
                  class_names=np.asarray(full.class_names))
    return _load_npz(cached, "easy_vqa")


def easy_vqa(split: str = "train", seed: int = 0, eval_fraction: float = 0.3) -> ImageSet:
    """easy-VQA split into probe-train / eval (stratified, by seed): with the default 0.3,
    at least 113 probe-train and 49 eval images in each of the 24 classes."""
    return _take_split(easy_vqa_set(), split, seed, eval_fraction)


# --------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path | str) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped when the name ends in .gz) as a numpy array:
    magic 0x0000 <type> <ndim>, then ndim big-endian uint32 sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    return parse_idx(data, str(path))


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, what: str = "IDX data") -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise TokensieveError(f"{what} is not an IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise TokensieveError(f"{what}: header says {shape} of {dtype}, but the file holds "
                              f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype, count, header).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise TokensieveError(
        f"Fashion-MNIST is not installed ({folder / (stem + '.gz')} is missing). It ships in "
        f"the Debian package dataset-fashion-mnist; install it with: {FASHION_MNIST_APT} (as "
        "root), or set TOKENSIEVE_FASHION_MNIST to a folder with the four IDX files.")


def fashion_mnist_folder() -> Path:
    root = os.environ.get("TOKENSIEVE_FASHION_MNIST")
    return Path(root).expanduser() if root else FASHION_MNIST_DIR


def fashion_mnist_part(part: str = "test", folder: Path | None = None) -> ImageSet:
    """Fashion-MNIST's official ``train`` (60,000) or ``test`` (10,000) part, the grey images
    repeated over three channels (N x 28 x 28 x 3)."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', not {part!r}")
    folder = Path(folder) if folder is not None else fashion_mnist_folder()
    prefix = "t10k" if part == "test" else "train"
    images = read_idx(_fashion_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_fashion_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TokensieveError(f"unexpected Fashion-MNIST files: images {images.shape}, labels "
                              f"{labels.shape}")
    if images.dtype != np.uint8 or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise TokensieveError("unexpected Fashion-MNIST files: not uint8 images with labels 0-9")
    rgb = np.repeat(images[..., None], 3, axis=-1)
    return ImageSet(rgb, labels.astype(np.int64), list(FASHION_MNIST_CLASSES),
                    "fashion_mnist", {"part": part, "grayscale": True})


def fashion_mnist(split: str = "train", seed: int = 0, eval_fraction: float = 0.5,
                  pool: str = "test") -> ImageSet:
    """Fashion-MNIST split into probe-train / eval. ``pool="test"`` (default) splits the
    10,000 official test images exactly as :func:`cifar10` splits CIFAR-10 (stratified, by
    seed); ``pool="official"`` takes the official 60,000 train images for ``train`` and the
    10,000 test images for ``eval`` (seed and eval_fraction unused)."""
    if pool == "official":
        if split not in ("train", "eval"):
            raise ValueError("with pool='official' the split is 'train' or 'eval'")
        out = fashion_mnist_part("train" if split == "train" else "test")
        out.name = f"fashion_mnist:official-{split}"
        return out
    if pool != "test":
        raise ValueError(f"pool must be 'test' or 'official', not {pool!r}")
    return _take_split(fashion_mnist_part("test"), split, seed, eval_fraction)


# --------------------------------------------------------------------------- ImageNet photos


def foolbox_wheel() -> Path:
    """The pinned foolbox 3.3.4 wheel in the downloads folder (fetched once, never
    installed)."""
    return package_file(FOOLBOX, FOOLBOX_VERSION, kind="wheel", sha256=FOOLBOX_SHA256,
                        folder=data_dir() / "downloads")


def _center_square(img, size: int):
    """Shorter side resized to ``size`` (bicubic, antialiased by Pillow), then the centre
    ``size`` x ``size`` crop; an image already that size is untouched."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def imagenet_class_names() -> list[str] | None:
    """The 1,000 ImageNet-1k class names (first lemma of each synset, in index order) from an
    installed timm's data files, read without importing timm; None when timm is absent."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"
    try:
        synsets = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t", 1) for line in
                      (info / "imagenet_synset_to_lemma.txt").read_text().splitlines() if line)
    except (OSError, ValueError):
        return None
    if len(synsets) != 1000:
        return None
    return [lemmas.get(s, s).split(",")[0].strip() for s in synsets]


def read_imagenet_photos(wheel: Path | str, size: int = 512) -> ImageSet:
    """The ImageNet photos of a foolbox wheel, read from the zip; square ``size`` images (19
    of the 20 are 512x512 already; 1024x683 ``imagenet_10_541`` is resized and centre-cropped).
    Labels are ImageNet-1k class indices."""
    from PIL import Image

    found = []
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            m = _FOOLBOX_IMAGENET.search(name)
            if m:
                with Image.open(io.BytesIO(zf.read(name))) as img:
                    arr = np.asarray(_center_square(img.convert("RGB"), size), dtype=np.uint8)
                found.append((int(m.group(1)), int(m.group(2)), arr, Path(name).name))
    if not found:
        raise TokensieveError(f"{Path(wheel).name} holds no foolbox/data/imagenet_*.jpg")
    found.sort(key=lambda t: t[0])
    names = imagenet_class_names() or [f"imagenet-{k}" for k in range(1000)]
    return ImageSet(np.stack([f[2] for f in found]), np.asarray([f[1] for f in found]), names,
                    "imagenet_photos", {"files": [f[3] for f in found]})


def imagenet_photos(size: int = 512) -> ImageSet:
    """The 20 ImageNet photos shipped in foolbox 3.3.4 (see :func:`read_imagenet_photos`)."""
    return read_imagenet_photos(foolbox_wheel(), size)


# --------------------------------------------------------------------------- model input

# lives in the vision place now (tokensieve.vision.images); re-exported for the benchmarks
from ..vision.images import to_pixel_values  # noqa: E402, F401
