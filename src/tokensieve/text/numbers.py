"""``keep_numbers``: a number is never cut or altered. Each number or ID (as kv keeps them
whole, :data:`tokensieve.spans.NUMBER_OR_ID`), with the scale word that follows it
("$48.2 million", "3 percent"), becomes one unit: kept whole or dropped whole, never charged
to the budget first (to keep every number, protect them with a regex instead)."""

from __future__ import annotations

import regex

from ..spans import NUMBER_OR_ID

# a scale or percent word after a number changes its value: it stays with the number
_SCALE = r"(?:thousand|million|billion|trillion|bn|mn|percent|per[ \t\u00a0]cent|%)"
_NUMBER_UNIT = regex.compile(
    rf"(?:{NUMBER_OR_ID.pattern})(?:[ \t\u00a0]+{_SCALE}(?!\w))?", regex.IGNORECASE)


def number_spans(text: str) -> list[tuple[int, int]]:
    """Spans of every number or ID of ``text`` with its scale word, in order."""
    return [(m.start(), m.end()) for m in _NUMBER_UNIT.finditer(text) if m.end() > m.start()]
