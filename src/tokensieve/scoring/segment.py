"""Text -> documents -> sentences -> words, each unit a character span into the original.

Words are runs of non-space grapheme clusters (``regex``'s ``\\X``; the zero-width space
U+200B separates words as a space does), so a combining mark,
an emoji sequence or a CJK character is never split. Scripts written without spaces (Han,
kana, Thai, ...) give one word per grapheme cluster. Sentences and documents are runs of
words, so every boundary of a coarser unit is also a word boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import regex

_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
# what separates words: whitespace and the zero-width space (not White_Space in Unicode, but
# a word break by definition; scraped pages put runs of it between sentences)
SPACE = r"[\s\u200b]"
_WORD_RE = regex.compile(
    rf"(?=[{_UNSPACED}])\X"  # one unspaced-script grapheme = one word
    # otherwise a run of graphemes that are not all whitespace (a space carrying a combining
    # mark is one grapheme and belongs to a word, so the word never starts inside it)
    rf"|(?:(?![{_UNSPACED}])(?:(?!{SPACE})\X|\X(?<!{SPACE})))+",
    regex.V1,
)
_SENTENCE_END = regex.compile(r"(?:[.!?…]+|[。！？])[\"'”’)\]»」』]*$")
_CJK_END = regex.compile(r"[。！？]$")
# a list or section number at the start of a line ("2. Products") belongs to its line
_ENUMERATOR = regex.compile(r"\(?\d{1,3}[.)]")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig no inc ltd co corp jan feb mar apr "
    "jun jul aug sep sept oct nov dec approx dept est".split()
)


@dataclass
class Segmentation:
    """Word spans plus the sentence and document each word belongs to.

    ``words``: int array (n, 2) of [start, end) character offsets, in order.
    ``sentence_of``/``document_of``: for each word, the index of its sentence / document.
    """

    text: str
    words: np.ndarray
    sentence_of: np.ndarray
    document_of: np.ndarray

    @property
    def n_words(self) -> int:
        return len(self.words)

    def spans(self, level: str) -> np.ndarray:
        """Spans of units at ``level`` ('word', 'sentence' or 'document')."""
        if level == "word":
            return self.words
        return group_spans(self.words, self.parent(level))

    def parent(self, level: str) -> np.ndarray:
        """For each word, the index of its unit at ``level``."""
        if level == "word":
            return np.arange(self.n_words)
        if level == "sentence":
            return self.sentence_of
        if level == "document":
            return self.document_of
        raise ValueError(f"unknown level {level!r}")

    def unit_text(self, level: str, i: int) -> str:
        start, end = self.spans(level)[i]
        return self.text[start:end]


def group_spans(words: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Spans covering each group of consecutive words (groups numbered 0..k-1 in order)."""
    if len(words) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    k = int(group.max()) + 1
    spans = np.zeros((k, 2), dtype=np.int64)
    first = np.r_[True, group[1:] != group[:-1]]
    last = np.r_[group[1:] != group[:-1], True]
    spans[group[first], 0] = words[first, 0]
    spans[group[last], 1] = words[last, 1]
    return spans


def find_words(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Word spans of ``text[start:end]`` as absolute offsets."""
    end = len(text) if end is None else end
    return [(m.start(), m.end()) for m in _WORD_RE.finditer(text, start, end)]


def _ends_sentence(word: str, line_start: bool = False) -> bool:
    if line_start and _ENUMERATOR.fullmatch(word):
        return False
    if _CJK_END.search(word):
        return True
    if not _SENTENCE_END.search(word):
        return False
    core = word.rstrip("\"'”’)]»」』").rstrip(".!?…")
    low = core.lower().lstrip("(\"'“‘[")
    if word.rstrip("\"'”’)]»」』").endswith(".") and not word.endswith(("..", "…")):
        if low in _ABBREVIATIONS or (len(low) == 1 and low.isalpha()):
            return False
    return True


def segment(
    text: str,
    *,
    document_breaks: list[int] | None = None,
    sentences: str = "punctuation",
) -> Segmentation:
    """Segment ``text`` into words, sentences and documents.

    ``document_breaks``: character offsets where a new document starts (for a list of
    documents joined by the caller); by default a blank line starts a new document.
    ``sentences``: 'punctuation' (end punctuation or a line break ends a sentence) or
    'lines' (every line is one sentence; used for code).
    """
    if sentences not in ("punctuation", "lines"):
        raise ValueError("sentences must be 'punctuation' or 'lines'")
    words = find_words(text)
    n = len(words)
    sentence_of = np.zeros(n, dtype=np.int64)
    document_of = np.zeros(n, dtype=np.int64)
    # does the previous word start its line (only whitespace before it on the line)?
    prev_starts_line = bool(n) and not text[text.rfind("\n", 0, words[0][0]) + 1:
                                            words[0][0]].strip()
    breaks = sorted(document_breaks or [])
    next_break = 0
    sent = doc = 0
    for i in range(1, n):
        prev_end, start = words[i - 1][1], words[i][0]
        gap = text[prev_end:start]
        new_doc = False
        if document_breaks is None:
            new_doc = gap.count("\n") >= 2
        else:
            while next_break < len(breaks) and breaks[next_break] <= prev_end:
                next_break += 1
            if next_break < len(breaks) and breaks[next_break] <= start:
                new_doc = True
        if new_doc:
            doc += 1
            sent += 1
        elif "\n" in gap or (
            sentences == "punctuation" and _ends_sentence(text[words[i - 1][0] : prev_end],
                                                          prev_starts_line)
        ):
            sent += 1
        prev_starts_line = "\n" in gap
        sentence_of[i] = sent
        document_of[i] = doc
    arr = np.array(words, dtype=np.int64).reshape(-1, 2)
    return Segmentation(text, arr, sentence_of, document_of)
