"""Build the compressed text from the kept units. Every piece of the output, words and
the whitespace between them, is a span of the input, so the output is an ordered
concatenation of input spans."""

from __future__ import annotations

import numpy as np
import regex

# whitespace as the segmenter sees it (str.strip() would also eat \x1c-\x1f, which are words)
_SPACE = regex.compile(r"\s*")


def _separator(text: str, units: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """The span to put between kept unit ``a`` and the next kept unit ``b``: the original
    gap when they were neighbours; otherwise the whitespace right before ``b`` if it holds
    a line break, else the last line break in the dropped stretch (so lines stay lines)."""
    gap_start, gap_end = int(units[b - 1, 1]), int(units[b, 0])
    if b == a + 1 or "\n" in text[gap_start:gap_end]:
        return gap_start, gap_end
    for i in range(b - 1, a, -1):  # gaps inside the dropped stretch, last first
        s, e = int(units[i - 1, 1]), int(units[i, 0])
        nl = text.rfind("\n", s, e)
        if nl >= 0:
            return s, nl + 1
    if gap_end > gap_start:
        return gap_start, gap_end
    for i in range(b - 1, a, -1):
        s, e = int(units[i - 1, 1]), int(units[i, 0])
        if e > s:
            return s, e
    return gap_start, gap_start


def _indent_before(text: str, start: int) -> int:
    """Start of the indentation of the line ``start`` is on, if only spaces precede it."""
    line_start = text.rfind("\n", 0, start) + 1
    return line_start if _SPACE.fullmatch(text, line_start, start) else start


def assemble(text: str, units: np.ndarray, keep: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
    """Output text and its list of merged [start, end) input spans, in order."""
    idx = np.flatnonzero(keep)
    spans: list[tuple[int, int]] = []

    def add(s: int, e: int) -> None:
        if e <= s:
            return
        if spans and spans[-1][1] == s:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))

    prev = None
    for i in idx:
        s, e = int(units[i, 0]), int(units[i, 1])
        if prev is None:
            add(_indent_before(text, s), s)
        else:
            add(*_separator(text, units, prev, int(i)))
        add(s, e)
        prev = int(i)
    return "".join(text[s:e] for s, e in spans), spans
