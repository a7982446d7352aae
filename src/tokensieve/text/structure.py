"""Format-specific rules: which parts of markdown and code must never be dropped, and which
must stay whole (fenced code blocks)."""

from __future__ import annotations

import bisect

import regex

_MD_HEADING = regex.compile(r"^[ \t]{0,3}#{1,6}[ \t].*$", regex.M)
# a list / quote marker stays together with the item's first word, so no item is left empty
_MD_MARKER = regex.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)]|>)[ \t]+\S+", regex.M)
_MD_FENCE = regex.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", regex.M | regex.S)
_MD_TABLE_RULE = regex.compile(r"^[ \t]*\|?[ \t]*:?-{3,}.*$", regex.M)

_C_DIRECTIVE = regex.compile(
    r"#\s*(include|define|if|ifdef|ifndef|endif|else|elif|pragma|undef|import|error)\b"
)


def markdown_code_blocks(text: str) -> list[tuple[int, int]]:
    """Spans of the fenced code blocks, each from its opening fence to the end of its closing
    fence line. A block is one unit: kept whole with its fences, byte for byte, or dropped
    whole; it is never cut inside and not protected (so a long one can go to meet a budget).
    An unclosed fence is not a block (its line is ordinary text)."""
    return [(m.start(), m.end()) for m in _MD_FENCE.finditer(text)]


def markdown_protected(text: str) -> list[tuple[int, int]]:
    """The markup that must stay: headings, list / quote markers (with the item's first
    word) and table rules, outside fenced code blocks (a '# comment' line in a code block is
    code, not a heading)."""
    blocks = markdown_code_blocks(text)
    starts = [s for s, _ in blocks]

    def in_block(a: int) -> bool:
        i = bisect.bisect_right(starts, a) - 1
        return i >= 0 and a < blocks[i][1]

    spans = []
    for rx in (_MD_HEADING, _MD_MARKER, _MD_TABLE_RULE):
        spans += [(m.start(), m.end()) for m in rx.finditer(text)
                  if m.end() > m.start() and not in_block(m.start())]
    return sorted(spans)


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
