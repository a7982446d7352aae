"""Format-specific rules: which parts of markdown and code must never be dropped."""

from __future__ import annotations

import regex

_MD_HEADING = regex.compile(r"^[ \t]{0,3}#{1,6}[ \t].*$", regex.M)
# a list / quote marker stays together with the item's first word, so no item is left empty
_MD_MARKER = regex.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)]|>)[ \t]+\S+", regex.M)
_MD_FENCE = regex.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", regex.M | regex.S)
_MD_TABLE_RULE = regex.compile(r"^[ \t]*\|?[ \t]*:?-{3,}.*$", regex.M)

_C_DIRECTIVE = regex.compile(
    r"#\s*(include|define|if|ifdef|ifndef|endif|else|elif|pragma|undef|import|error)\b"
)


def markdown_protected(text: str) -> list[tuple[int, int]]:
    """Headings, list / quote markers, fenced code blocks and table rules."""
    spans = []
    for rx in (_MD_HEADING, _MD_MARKER, _MD_FENCE, _MD_TABLE_RULE):
        spans += [(m.start(), m.end()) for m in rx.finditer(text) if m.end() > m.start()]
    return spans


def _is_comment_line(stripped: str) -> bool:
    if stripped.startswith("#"):
        return not stripped.startswith("#!") and not _C_DIRECTIVE.match(stripped)
    if stripped.startswith(("//", "--")):
        return True
    return stripped.startswith("/*") and stripped.endswith("*/")


def code_droppable_lines(text: str) -> list[tuple[int, int]]:
    """Spans of lines that can go without breaking syntax: whole-line comments and the
    inner lines of docstrings / block comments (their opening and closing lines stay)."""
    out: list[tuple[int, int]] = []
    closer: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        start, end = pos, pos + len(line.rstrip("\r\n"))
        pos += len(line)
        stripped = line.strip()
        if closer is not None:
            if closer in stripped:
                closer = None  # the closing line stays
            elif stripped:
                out.append((start, end))
            continue
        for quote in ('"""', "'''"):
            head = stripped.lstrip("rRbBuU")
            if head.startswith(quote) and head.count(quote) == 1:
                closer = quote
        if closer is None and stripped.startswith("/*") and "*/" not in stripped:
            closer = "*/"
        if closer is None and _is_comment_line(stripped):
            out.append((start, end))
    return out
