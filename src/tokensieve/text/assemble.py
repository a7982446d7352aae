"""Build the compressed text from the kept units. Every piece of the output, words and
the whitespace between them, is a span of the input, so the output is an ordered
concatenation of input spans."""

from __future__ import annotations

import numpy as np
import regex

# whitespace as the segmenter sees it (str.strip() would also eat \x1c-\x1f, which are words)
_SPACE = regex.compile(r"\s*")


def gap_tail(text: str, start: int, end: int) -> int:
    """Where the part of the whitespace gap ``text[start:end]`` that separates two kept units
    which were not neighbours begins: with line breaks, at most one blank line and the next
    line's indentation (from the last-but-one line break, a CRLF kept whole); without, its
    last character. A run of whitespace in a dropped stretch never comes out whole."""
    last = text.rfind("\n", start, end)
    if last < 0:
        return max(start, end - 1)
    prev = text.rfind("\n", start, last)
    k = prev if prev >= 0 else last
    return k - 1 if k > start and text[k - 1] == "\r" else k


def gap_tails(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """:func:`gap_tail` of many gaps at once (vectorised; same results)."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if len(starts) == 0:
        return starts.copy()
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    nl = np.flatnonzero(codes == 10)
    j = np.searchsorted(nl, ends, side="left") - 1  # last line break before the gap's end
    last = np.where(j >= 0, nl[np.clip(j, 0, None)] if len(nl) else -1, -1)
    has_last = last >= starts
    prev = np.where(j >= 1, nl[np.clip(j - 1, 0, None)] if len(nl) else -1, -1)
    k = np.where(prev >= starts, prev, last)
    cr = (k > starts) & (codes[np.clip(k - 1, 0, None)] == 13) if len(codes) else k > starts
    k = np.where(cr, k - 1, k)
    return np.where(has_last, k, np.maximum(starts, ends - 1))


def _separator(text: str, units: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """The span to put between kept unit ``a`` and the next kept unit ``b``: the original
    gap when they were neighbours; otherwise the tail of the whitespace right before ``b``
    if it holds a line break, else of the last line break in the dropped stretch (so lines
    stay lines). Tails are bounded (see :func:`gap_tail`)."""
    gap_start, gap_end = int(units[b - 1, 1]), int(units[b, 0])
    if b == a + 1:
        return gap_start, gap_end
    if "\n" in text[gap_start:gap_end]:
        return gap_tail(text, gap_start, gap_end), gap_end
    for i in range(b - 1, a, -1):  # gaps inside the dropped stretch, last first
        s, e = int(units[i - 1, 1]), int(units[i, 0])
        nl = text.rfind("\n", s, e)
        if nl >= 0:
            return gap_tail(text, s, nl + 1), nl + 1
    if gap_end > gap_start:
        return gap_tail(text, gap_start, gap_end), gap_end
    for i in range(b - 1, a, -1):
        s, e = int(units[i - 1, 1]), int(units[i, 0])
        if e > s:
            return gap_tail(text, s, e), e
    return gap_start, gap_start


def indent_before(text: str, start: int) -> int:
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
            add(indent_before(text, s), s)
        else:
            add(*_separator(text, units, prev, int(i)))
        add(s, e)
        prev = int(i)
    return "".join(text[s:e] for s, e in spans), spans
