"""Protected text: character spans that must survive compression byte for byte."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import regex

from ..errors import UsageError
from ..spans import check_spans, value_spans


def _items(value, what: str) -> list:
    """A list of options: None is none, a lone string is one (not its characters)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise UsageError(f"{what} must be a list, got {type(value).__name__}.") from None


def protected_spans(
    text: str,
    patterns: Iterable[str] = (),
    literals: Iterable[str] = (),
    spans: Iterable[tuple[int, int]] = (),
    keep_numbers: bool = False,
) -> list[tuple[int, int]]:
    """All protected [start, end) spans: regex matches, literal occurrences, given spans."""
    out: list[tuple[int, int]] = []
    patterns, literals = _items(patterns, "protect"), _items(literals, "keep_text")
    spans = _items(spans, "keep_spans")
    if keep_numbers:  # numbers and IDs, as kv keeps them whole (tokensieve.spans)
        out += value_spans(text)
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise UsageError(f"protect patterns must be non-empty regex strings, got {pat!r}")
        try:
            rx = regex.compile(pat)
        except regex.error as exc:
            raise UsageError(f"invalid protect regex {pat!r}: {exc}; escape special characters "
                             "or pass the text as a literal (keep_text / --keep-text).") from exc
        out += [(m.start(), m.end()) for m in rx.finditer(text) if m.end() > m.start()]
    for lit in literals:
        if not isinstance(lit, str) or not lit:
            raise UsageError(f"protected literals must be non-empty strings, got {lit!r}")
        start = text.find(lit)
        while start >= 0:
            out.append((start, start + len(lit)))
            start = text.find(lit, start + 1)
    out += check_spans(spans, "keep_spans", limit=len(text), unit="characters")
    return sorted(out)


def words_touching(words: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Boolean mask of the words overlapping any of ``spans``."""
    mask = np.zeros(len(words), dtype=bool)
    if not spans or len(words) == 0:
        return mask
    for s, e in spans:
        lo = np.searchsorted(words[:, 1], s, side="right")  # first word ending after s
        hi = np.searchsorted(words[:, 0], e, side="left")  # words starting before e
        mask[lo:hi] = True
    return mask
