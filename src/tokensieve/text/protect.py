"""Protected text: character spans that must survive compression byte for byte.

User regexes are hostile until checked (:func:`compile_pattern`): a length limit, a limit on
how far nested repeats expand (``((a{1000}){1000}){1000}`` makes the regex compiler
allocate gigabytes), compiled outside the ``regex`` module's process-wide cache, and run
under one time limit over exactly the text they protect (:func:`protected_spans`)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import regex
from regex import _regex_core

from ..errors import InputError, UsageError
from ..spans import check_spans

MAX_PATTERN_CHARS = 500
# how far a pattern may expand: its literal characters, each repeat multiplying its body by
# its largest count (its smallest when unbounded); compiling costs about 260 bytes a unit
MAX_PATTERN_SIZE = 10_000
MAX_PATTERNS = 64   # protect / keep_text patterns one request may send (the service)


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


def _parse(pattern: str):
    """The pattern's syntax tree from the regex module's own parser (nothing compiled)."""
    flags = 0
    for _ in range(3):  # a flag set in the middle of the pattern restarts the parse
        source = _regex_core.Source(pattern)
        info = _regex_core.Info(flags, source.char_type, {})
        info.guess_encoding = regex.UNICODE
        source.ignore_space = bool(info.flags & regex.VERBOSE)
        try:
            return _regex_core._parse_pattern(source, info)
        except _regex_core._UnscopedFlagSet:
            flags = info.global_flags
    raise regex.error("inconsistent inline flags", pattern)


def _size(node, depth: int = 0) -> int:
    """How far a parsed pattern expands: literal characters, each repeat's body times its
    largest count (smallest when unbounded), summed over sequences and branches."""
    if depth > 200:
        raise UsageError("a protect pattern nests more than 200 levels deep; simplify it.")
    if isinstance(node, _regex_core.String):
        return max(1, len(node.characters))
    if isinstance(node, _regex_core.CallGroup):  # (?R)?a grew 0.8 GB in its 1 s time limit
        raise UsageError("recursive protect patterns ((?R), (?1), (?&name)) are not allowed; "
                         "write the repetition out.")
    kids = []
    for value in vars(node).values():
        if isinstance(value, _regex_core.RegexBase):
            kids.append(value)
        elif isinstance(value, list | tuple):
            kids += [v for v in value if isinstance(v, _regex_core.RegexBase)]
    inner = max(1, sum(_size(k, depth + 1) for k in kids))
    if isinstance(node, _regex_core.GreedyRepeat):  # lazy and possessive repeats too
        hi = node.max_count
        return inner * (hi if hi is not None else max(1, node.min_count))
    return inner


def check_pattern(pattern) -> None:
    """Refuse a protect regex that is not a non-empty string, is longer than
    MAX_PATTERN_CHARS, expands past MAX_PATTERN_SIZE (nested repeats) or calls a group
    (recursion), before it is compiled. A :class:`UsageError` names the limit."""
    if not isinstance(pattern, str) or not pattern:
        raise UsageError(f"protect patterns must be non-empty regex strings, got {pattern!r}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UsageError(f"a protect pattern is {len(pattern)} characters long, over the limit "
                         f"of {MAX_PATTERN_CHARS}; protect literal text with keep_text.")
    try:
        size = _size(_parse(pattern))
    except regex.error as exc:
        raise UsageError(f"invalid protect regex {pattern!r}: {exc}; escape special characters "
                         "or pass the text as a literal (keep_text / --keep-text).") from None
    if size > MAX_PATTERN_SIZE:
        raise UsageError(f"the protect pattern {pattern!r} expands to {size:,} units (its "
                         "repeat counts multiply), over the limit of "
                         f"{MAX_PATTERN_SIZE:,}; use smaller counts or + and *.")


def compile_pattern(pattern) -> regex.Pattern:
    """A checked protect regex (:func:`check_pattern`), compiled without entering the regex
    module's process-wide caches (a client's patterns must not pile up there)."""
    check_pattern(pattern)
    try:
        return regex.compile(pattern, cache_pattern=False)
    except (regex.error, ValueError) as exc:  # e.g. a named list with no list given
        raise UsageError(f"invalid protect regex {pattern!r}: {exc}; escape special characters "
                         "or pass the text as a literal (keep_text / --keep-text).") from None
    finally:
        _forget(pattern)


def _forget(pattern: str) -> None:
    """regex notes every pattern string it compiles in a dict, cached or not: drop it."""
    seen = getattr(getattr(regex, "_main", None), "_locale_sensitive", None)
    if isinstance(seen, dict):
        seen.pop((str, pattern), None)


def pattern_spans(text: str, patterns: Iterable[str], timeout: float | None = None
                  ) -> list[tuple[int, int]]:
    """The non-empty matches of ``patterns`` in ``text``, all of them within ``timeout``
    seconds together (None: no limit); over it, an :class:`InputError`."""
    compiled = [compile_pattern(p) for p in patterns]  # every pattern checked before any runs
    deadline = None if timeout is None else time.monotonic() + timeout
    out: list[tuple[int, int]] = []
    for pat, rx in zip(patterns, compiled, strict=True):
        left = None if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            out += [(m.start(), m.end()) for m in rx.finditer(text, timeout=left)
                    if m.end() > m.start()]
        except TimeoutError:
            raise InputError(f"the protect patterns took longer than {timeout:g} s on this "
                             f"text ({pat!r} was running); simplify the pattern.") from None
    return out


def protected_spans(
    text: str,
    patterns: Iterable[str] = (),
    literals: Iterable[str] = (),
    spans: Iterable[tuple[int, int]] = (),
    timeout: float | None = None,
) -> list[tuple[int, int]]:
    """All protected [start, end) spans: regex matches, literal occurrences, given spans.
    The regexes run within ``timeout`` seconds together (see :func:`pattern_spans`)."""
    out: list[tuple[int, int]] = []
    patterns, literals = _items(patterns, "protect"), _items(literals, "keep_text")
    spans = _items(spans, "keep_spans")
    out += pattern_spans(text, patterns, timeout)
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
