"""What every place treats as one unit of meaning that must not be cut, and how user spans
are checked: one number pattern, one ID pattern, one span validator, shared by text and kv."""

from __future__ import annotations

import regex

from .errors import UsageError

# a number: optional sign, digit groups joined by . , : / - (12.5, 1,024, 2024-01-15, 3:45),
# optional percent sign
NUMBER_PATTERN = r"(?<![\w])[-+]?\d+(?:[.,:/-]\d+)*%?"
# an ID or code: letters and digits joined by - _ . : / that holds at least one digit
# (Z9K6-4842, PX-1234, QX7-19B4, v2.3.1, A12); plain words and plain numbers are not IDs
ID_PATTERN = r"(?<![\w])(?=[\w.:/-]*\d)(?=[\w.:/-]*[^\W\d_])[^\W_]+(?:[._:/-][^\W_]+)*"
# either: what kv keeps whole and text protects with keep_numbers
NUMBER_OR_ID = regex.compile(f"{ID_PATTERN}|{NUMBER_PATTERN}")


def value_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of every number and ID in ``text``, in order, not overlapping."""
    return [(m.start(), m.end()) for m in NUMBER_OR_ID.finditer(text) if m.end() > m.start()]


def check_spans(spans, name: str, limit: int | None = None,
                unit: str = "positions") -> list[tuple[int, int]]:
    """User spans as sorted ``(start, end)`` int pairs with ``0 <= start < end`` (and
    ``end <= limit`` when a limit is known), or a :class:`UsageError` naming the bad one."""
    if spans is None:
        return []
    if isinstance(spans, str | bytes) or not hasattr(spans, "__iter__"):
        raise UsageError(f"{name} must be a list of (start, end) pairs of {unit}, "
                         f"got {spans!r}.")
    out = []
    for span in spans:
        try:
            a, b = span
            if isinstance(a, bool) or isinstance(b, bool) or int(a) != a or int(b) != b:
                raise TypeError
            a, b = int(a), int(b)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be (start, end) pairs of {unit}, "
                             f"got {span!r}.") from None
        if limit is not None and not 0 <= a < b <= limit:
            raise UsageError(f"{name} span {span!r} is outside the text (length {limit}) or "
                             f"empty; give 0 <= start < end <= {limit}.")
        if not 0 <= a < b:
            raise UsageError(f"{name} span {span!r} must satisfy 0 <= start < end.")
        out.append((a, b))
    return sorted(out)


def token_spans(offsets, char_spans, singles: bool = False) -> list[tuple[int, int]]:
    """Token spans covering each character span, from a tokenizer's (start, end) character
    offsets (sorted by start). Spans of a single token are left out unless ``singles`` (a
    single entry is already whole). Binary search: O(spans x log tokens)."""
    import numpy as np

    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if not len(off) or not char_spans:
        return []
    cs = np.asarray(char_spans, dtype=np.int64).reshape(-1, 2)
    first = np.searchsorted(off[:, 1], cs[:, 0], side="right")   # first token ending after a
    last = np.searchsorted(off[:, 0], cs[:, 1], side="left")     # tokens starting before b
    least = 1 if singles else 2
    return [(int(a), int(b)) for a, b in zip(first, last, strict=True) if b - a >= least]
