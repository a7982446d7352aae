"""The units one compression selects among: the finest units (words or subword tokens)
and, for each coarser level, which unit every fine unit belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import regex

from .segment import Segmentation, group_spans

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
    grapheme boundaries, so no character is ever split."""
    text = seg.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cuts = np.unique(np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1))
    spans, word_of = [], []
    for w, (ws, we) in enumerate(seg.words):
        inner = cuts[(cuts > ws) & (cuts < we)]
        if len(inner):
            bounds = {m.end() for m in _GRAPHEME.finditer(text, int(ws), int(we))}
            inner = [int(c) for c in inner if int(c) in bounds]
        points = [int(ws), *inner, int(we)]
        for a, b in zip(points[:-1], points[1:], strict=True):
            spans.append((a, b))
            word_of.append(w)
    word_of_arr = np.array(word_of, dtype=np.int64)
    return Units(text, "token", np.array(spans, dtype=np.int64).reshape(-1, 2), {
        "word": word_of_arr,
        "sentence": seg.sentence_of[word_of_arr],
        "document": seg.document_of[word_of_arr],
    })
