"""Names kept whole: a run of 2 to 6 capitalised words on one line ("Margaret Okonkwo",
"Royal Australian Navy", "New York Stock Exchange") becomes one unit, kept or dropped
whole, so a method that keeps part of a name keeps all of it. Half a name answers nothing."""

from __future__ import annotations

import regex

# a capitalised word, or a short abbreviation with its dot ("Dr.", "St."); a word's final
# dot is a sentence end, not part of a name ("... in Porto Alegre. They ...")
_WORD = r"\p{Lu}(?:\p{Ll}{0,2}\.(?=[ \t\u00a0])|[\p{L}\p{M}\p{Nd}'’&-]*)"
# the classes of a word and of the gap share no character: matching is linear in the text
_NAME = regex.compile(rf"(?<![\p{{L}}\p{{M}}\p{{Nd}}]){_WORD}(?:[ \t\u00a0]+{_WORD}){{1,5}}")


def name_spans(text: str) -> list[tuple[int, int]]:
    """Spans of every run of 2-6 capitalised words, in order."""
    return [(m.start(), m.end()) for m in _NAME.finditer(text)]
