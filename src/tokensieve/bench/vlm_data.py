"""Questions about images for the small VLM: single images and 2x2 grids with region questions.

Sources: Fashion-MNIST's 10,000 official test images (10 classes, named as words:
"sneaker", "ankle boot", ...) and the labelled easy-VQA images (24 classes "<colour> <shape>"),
as :mod:`.vision_data` reads them. Each source pool is split by SOURCE image into train / dev /
test (stratified per class, 80 / 10 / 10, fixed by the seed), so no source image is in two
splits.

Question types (``QTYPES``):

- ``single``: one image upscaled to 224x224, "What is in this picture?" -> its class word.
- ``corner_what``: four images, each 112x112 in a 224 canvas; "What is in the top-left
  corner?" -> the class word of that cell.
- ``corner_which``: "Which corner shows a sneaker?" -> "top right" (asked only of a class that
  is in exactly one cell).
- ``count``: "How many of the four are clothes?" (clothes, shoes or shapes) -> "zero" ... "four".

Images are rendered on demand from their sources (:meth:`VLMData.image`), never stored.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .vision_data import ImageSet, easy_vqa_set, fashion_mnist_part, stratified_split

IMAGE_SIZE = 224
CELL = IMAGE_SIZE // 2
QTYPES = ("single", "corner_what", "corner_which", "count")
SPLITS = ("train", "dev", "test")
CORNERS = ("top left", "top right", "bottom left", "bottom right")  # row-major cells
CORNER_OFFSETS = ((0, 0), (0, CELL), (CELL, 0), (CELL, CELL))  # (y, x)
NUMBERS = ("zero", "one", "two", "three", "four")
FASHION_WORDS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt",
                 "sneaker", "bag", "ankle boot")
GROUPS = {"clothes": {"t-shirt", "trousers", "pullover", "dress", "coat", "shirt"},
          "shoes": {"sandal", "sneaker", "ankle boot"}}
COUNT_GROUPS = ("clothes", "shoes", "shapes")
SINGLE_QUESTION = "What is in this picture?"
MAX_IMAGES = 50_000  # per call (about 10 GB of cached features): a bound on work


@dataclass(frozen=True)
class Source:
    """One source image: ``dataset`` ("fashion_mnist" or "easy_vqa"), its index in that pool,
    and its class word."""

    dataset: str
    index: int
    word: str

    @property
    def group(self) -> str:
        if self.dataset == "easy_vqa":
            return "shapes"
        return next((g for g, words in GROUPS.items() if self.word in words), "bags")


@dataclass(frozen=True)
class Example:
    """A question about image ``image`` (an index into :attr:`VLMData.layouts`)."""

    image: int
    qtype: str
    question: str
    answer: str


@dataclass
class VLMData:
    """Images as layouts of sources (one for a single image, four row-major for a grid) and
    the questions asked of them."""

    split: str
    layouts: list[tuple[Source, ...]]
    examples: list[Example]
    pools: dict[str, ImageSet] = field(repr=False, default_factory=dict)
    spec: dict = field(default_factory=dict)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 224 x 224 x 3."""
        return render(self.layouts[i], self.pools)

    def images(self, index) -> np.ndarray:
        return np.stack([self.image(int(i)) for i in index])

    def counts(self) -> dict[str, int]:
        out = {q: 0 for q in QTYPES}
        for ex in self.examples:
            out[ex.qtype] += 1
        out["images"] = len(self.layouts)
        return out

    def key(self) -> str:
        """A short hash of what defines these images (for caches of their features)."""
        blob = json.dumps({"spec": self.spec,
                           "layouts": [[(s.dataset, s.index) for s in lay]
                                       for lay in self.layouts]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def sources(self) -> set[tuple[str, int]]:
        return {(s.dataset, s.index) for lay in self.layouts for s in lay}


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def render(layout: tuple[Source, ...], pools: dict[str, ImageSet]) -> np.ndarray:
    """One source upscaled to 224x224, or four sources in a 2x2 grid of 112 px cells
    (row-major: top left, top right, bottom left, bottom right)."""
    if len(layout) == 1:
        s = layout[0]
        return _resize(pools[s.dataset].images[s.index], IMAGE_SIZE)
    if len(layout) != 4:
        raise ValueError(f"a layout has 1 or 4 sources, not {len(layout)}")
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for s, (y, x) in zip(layout, CORNER_OFFSETS, strict=True):
        canvas[y:y + CELL, x:x + CELL] = _resize(pools[s.dataset].images[s.index], CELL)
    return canvas


def class_word(dataset: str, name: str) -> str:
    """The answer word of a class: Fashion-MNIST's names as plain words, easy-VQA's as is."""
    if dataset == "fashion_mnist":
        from .vision_data import FASHION_MNIST_CLASSES

        return FASHION_WORDS[FASHION_MNIST_CLASSES.index(name)]
    return name


def source_pools() -> dict[str, ImageSet]:
    """The two source pools, read as :mod:`.vision_data` reads them."""
    return {"fashion_mnist": fashion_mnist_part("test"), "easy_vqa": easy_vqa_set()}


def split_sources(labels, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of a pool per split: stratified per class, 80% train, 10% dev, 10% test."""
    labels = np.asarray(labels)
    train, rest = stratified_split(labels, 0.2, seed)
    dev_i, test_i = stratified_split(labels[rest], 0.5, seed + 1)
    return {"train": train, "dev": np.sort(rest[dev_i]), "test": np.sort(rest[test_i])}


def _count_question(group: str) -> str:
    return f"How many of the four are {group}?"


def corner_what_question(corner: str) -> str:
    return f"What is in the {corner.replace(' ', '-')} corner?"


def corner_which_question(word: str) -> str:
    article = "an" if word[0] in "aeiou" else "a"
    return f"Which corner shows {article} {word}?"


def grid_questions(layout: tuple[Source, ...], rng: np.random.Generator,
                   image: int, every: bool = False) -> list[Example]:
    """One question of each grid type about a 2x2 layout (``corner_which`` only when some
    class is in exactly one cell); ``every``: all of them (each corner, each unique class,
    each count group), drawing the same random numbers, so the layouts that follow are the
    same either way."""
    words = [s.word for s in layout]
    c = int(rng.integers(4))
    unique = [i for i, w in enumerate(words) if words.count(w) == 1]
    u = unique[int(rng.integers(len(unique)))] if unique else None
    group = COUNT_GROUPS[int(rng.integers(len(COUNT_GROUPS)))]
    what = range(4) if every else [c]
    which = unique if every else ([] if u is None else [u])
    groups = COUNT_GROUPS if every else (group,)
    out = [Example(image, "corner_what", corner_what_question(CORNERS[i]), words[i])
           for i in what]
    out += [Example(image, "corner_which", corner_which_question(words[i]), CORNERS[i])
            for i in which]
    out += [Example(image, "count", _count_question(g),
                    NUMBERS[sum(s.group == g for s in layout)]) for g in groups]
    return out


QUESTION_SETS = ("one", "all")


def build(split: str = "train", n_single: int = 100, n_grid: int = 100, seed: int = 0,
          pools: dict[str, ImageSet] | None = None, easy_share: float = 0.4,
          questions: str = "one") -> VLMData:
    """``n_single`` single-image questions and ``n_grid`` grids (up to three questions each)
    on ``split``'s source images, drawn by ``seed``; each source comes from easy-VQA with
    probability ``easy_share``, else Fashion-MNIST. ``questions="all"`` asks every grid
    question of each grid (training data; the images stay the same, and so does
    :meth:`VLMData.key`). The same arguments give the same data."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if n_single < 0 or n_grid < 0 or n_single + n_grid > MAX_IMAGES:
        raise UsageError(f"n_single and n_grid must be >= 0 with at most {MAX_IMAGES} images "
                         f"in all, got {n_single} and {n_grid}")
    if questions not in QUESTION_SETS:
        raise UsageError(f"questions must be one of {', '.join(QUESTION_SETS)}, "
                         f"not {questions!r}")
    if not 0.0 <= easy_share <= 1.0:
        raise UsageError(f"easy_share must be in [0, 1], got {easy_share}")
    pools = pools if pools is not None else source_pools()
    index = {name: split_sources(pool.labels, seed)[split] for name, pool in pools.items()}
    empty = [name for name, idx in index.items() if len(idx) == 0]
    if empty and n_single + n_grid:
        raise UsageError(f"the {split} split of {', '.join(empty)} holds no image (the pool "
                         "is too small to split 80/10/10 per class)")
    words = {name: [class_word(name, c) for c in pool.class_names]
             for name, pool in pools.items()}
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])

    def draw() -> Source:
        name = "easy_vqa" if rng.random() < easy_share else "fashion_mnist"
        i = int(index[name][rng.integers(len(index[name]))])
        return Source(name, i, words[name][int(pools[name].labels[i])])

    layouts: list[tuple[Source, ...]] = []
    examples: list[Example] = []
    for _ in range(n_single):
        layouts.append((draw(),))
        examples.append(Example(len(layouts) - 1, "single", SINGLE_QUESTION, layouts[-1][0].word))
    for _ in range(n_grid):
        layouts.append(tuple(draw() for _ in range(4)))
        examples.extend(grid_questions(layouts[-1], rng, len(layouts) - 1,
                                       every=questions == "all"))
    spec = {"split": split, "n_single": n_single, "n_grid": n_grid, "seed": seed,
            "easy_share": easy_share, "pools": {k: len(v) for k, v in pools.items()}}
    return VLMData(split, layouts, examples, pools, spec)


_ARTICLES = re.compile(r"^(?:(?:it is|it's|this is|there is|there are|a|an|the)\s+)+")


def normalise_answer(text: str) -> str:
    """Lower case, first line, no punctuation around words (hyphens kept), no leading article
    or "it is", digits 0-4 as words, single spaces: "The Top-Right." -> "top right"."""
    text = text.strip().split("\n", 1)[0].lower()
    text = re.sub(r"[^\w\s-]", " ", text).replace("_", " ")
    text = re.sub(r"(?<=[a-z])-(?=(?:left|right)\b)", " ", text)  # top-left -> top left
    text = " ".join(text.split())
    text = _ARTICLES.sub("", text).strip()
    if text in ("0", "1", "2", "3", "4"):
        text = NUMBERS[int(text)]
    return text
