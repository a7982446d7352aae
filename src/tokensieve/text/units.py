"""The units one compression selects among: the finest units (words or subword tokens)
and, for each coarser level, which unit every fine unit belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import regex

from ..scoring.segment import Segmentation, group_spans

_GRAPHEME = regex.compile(r"\X")


@dataclass
class Units:
    """Fine-unit spans (n, 2) and, per level, the parent index of every fine unit."""

    text: str
    fine_level: str
    spans: np.ndarray
    parents: dict[str, np.ndarray]

    def level_spans(self, level: str) -> np.ndarray:
        if level == self.fine_level:
            return self.spans
        return group_spans(self.spans, self.parents[level])

    def unit_of(self, level: str) -> np.ndarray:
        if level == self.fine_level:
            return np.arange(len(self.spans))
        return self.parents[level]


def word_units(seg: Segmentation) -> Units:
    return Units(seg.text, "word", seg.words,
                 {"sentence": seg.sentence_of, "document": seg.document_of})


def token_units(seg: Segmentation, tokenizer) -> Units:
    """Subword units: each word cut at the tokenizer's token boundaries that are also
    grapheme boundaries, so no character is ever split. The cuts inside each word are found
    with a binary search over the sorted token boundaries (O((words + tokens) log tokens))."""
    text = seg.text
    words = seg.words
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cuts = np.unique(np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1))
    lo = np.searchsorted(cuts, words[:, 0], side="right")  # first cut > word start
    hi = np.searchsorted(cuts, words[:, 1], side="left")  # cuts < word end
    inner_pos: list[int] = []
    inner_word: list[int] = []
    for w in np.flatnonzero(hi > lo):
        ws, we = int(words[w, 0]), int(words[w, 1])
        bounds = {m.end() for m in _GRAPHEME.finditer(text, ws, we)}
        for c in cuts[lo[w] : hi[w]].tolist():
            if c in bounds:
                inner_pos.append(c)
                inner_word.append(int(w))
    inner = np.array(inner_pos, dtype=np.int64)
    # words are disjoint and in order, so sorting every start / end / owner lines them up
    starts = np.sort(np.r_[words[:, 0], inner])
    ends = np.sort(np.r_[inner, words[:, 1]])
    word_of = np.sort(np.r_[np.arange(len(words), dtype=np.int64),
                            np.array(inner_word, dtype=np.int64)])
    spans = np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)
    return Units(text, "token", spans, {
        "word": word_of,
        "sentence": seg.sentence_of[word_of],
        "document": seg.document_of[word_of],
    })


def merge_units(units: Units, ranges: list[tuple[int, int]]) -> Units:
    """``units`` with all the fine units that overlap one of ``ranges`` merged into a single
    fine unit (e.g. a fenced code block: kept or dropped whole, never cut). The merged unit
    belongs to the sentence and document of its first member; ids are renumbered so that
    every level stays a run of consecutive fine units numbered in order."""
    spans = units.spans
    n = len(spans)
    if n == 0 or not ranges:
        return units
    first = np.ones(n, dtype=bool)  # does fine unit i start a merged unit?
    for s, e in ranges:
        lo = int(np.searchsorted(spans[:, 1], s, side="right"))  # first unit ending after s
        hi = int(np.searchsorted(spans[:, 0], e, side="left"))  # units starting before e
        first[lo + 1 : hi] = False
    if first.all():
        return units
    last = np.r_[first[1:], True]
    merged = np.stack([spans[first, 0], spans[last, 1]], axis=1)
    parents = {}
    for level, parent in units.parents.items():
        head, tail = parent[first], parent[last]
        parents[level] = np.cumsum(np.r_[True, head[1:] != tail[:-1]]) - 1
    return Units(units.text, units.fine_level, merged, parents)
