"""Build the compressed text from the kept units. Every piece of the output, words and
the whitespace between them, is a span of the input, so the output is an ordered
concatenation of input spans. Whitespace is the first thing given up: any separator can be
*squeezed* to its least part (:func:`least_separator`) before a word has to go."""

from __future__ import annotations

import numpy as np
import regex

from ..scoring.segment import SPACE

# whitespace as the segmenter sees it (str.strip() would also eat \x1c-\x1f, which are words)
_SPACE = regex.compile(rf"{SPACE}*")


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


def _line_break(text: str, start: int, nl: int) -> int:
    """Start of the line break ending at ``nl`` (a CRLF kept whole), not before ``start``."""
    return nl - 1 if nl > start and text[nl - 1] == "\r" else nl


def least_separator(text: str, start: int, end: int,
                    keep_indent: bool = False) -> list[tuple[int, int]]:
    """The least of the whitespace ``text[start:end]`` that still separates what it
    separated, as spans of it: without a line break its last character; with one, the last
    line break (and the one before it, so a paragraph break stays one blank line) but not
    the blanks around them, nor the next line's indentation unless ``keep_indent`` (code)."""
    if end <= start:
        return []
    last = text.rfind("\n", start, end)
    if last < 0:
        return [(end - 1, end)]
    a = _line_break(text, start, last)
    tail = (a, end if keep_indent else last + 1)
    prev = text.rfind("\n", start, a)
    if prev < 0:
        return [tail]
    return [(_line_break(text, start, prev), prev + 1), tail]


def indent_before(text: str, start: int) -> int:
    """Start of the indentation of the line ``start`` is on, if only spaces precede it."""
    line_start = text.rfind("\n", 0, start) + 1
    return line_start if _SPACE.fullmatch(text, line_start, start) else start


def separators(text: str, units: np.ndarray, keep: np.ndarray) -> list[tuple[int, int, int]]:
    """``(i, start, end)`` for each kept unit ``i``: the whitespace span put before it (the
    first one's line indentation, then :func:`_separator`)."""
    out, prev = [], None
    for i in np.flatnonzero(keep).tolist():
        s = int(units[i, 0])
        if prev is None:
            out.append((i, indent_before(text, s), s))
        else:
            out.append((i, *_separator(text, units, prev, i)))
        prev = i
    return out


def squeezed(text: str, start: int, end: int, first: bool,
             keep_indent: bool) -> list[tuple[int, int]]:
    """What is left of the separator ``text[start:end]`` once squeezed:
    nothing before the first kept unit (its indentation, unless ``keep_indent``), else
    :func:`least_separator`."""
    if first:
        return [(start, end)] if keep_indent and end > start else []
    return least_separator(text, start, end, keep_indent)


def assemble(text: str, units: np.ndarray, keep: np.ndarray, squeeze: np.ndarray | None = None,
             keep_indent: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """Output text and its list of merged [start, end) input spans, in order. The separator
    of a kept unit ``i`` with ``squeeze[i]`` is reduced to its least part (:func:`squeezed`)."""
    spans: list[tuple[int, int]] = []

    def add(s: int, e: int) -> None:
        if e <= s:
            return
        if spans and spans[-1][1] == s:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))

    for k, (i, a, b) in enumerate(separators(text, units, keep)):
        if squeeze is not None and squeeze[i]:
            for piece in squeezed(text, a, b, k == 0, keep_indent):
                add(*piece)
        else:
            add(a, b)
        add(int(units[i, 0]), int(units[i, 1]))
    return "".join(text[s:e] for s, e in spans), spans
