"""Segmentation: words never split a grapheme cluster; sentences and documents are runs of
words, so their boundaries are word boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensieve.scoring.segment import find_words, group_spans, segment

_GRAPHEME = regex.compile(r"\X")
_SPACE = regex.compile(r"[\s\u200b]*")  # White_Space and U+200B, as the segmenter sees it


def words(text: str) -> list[str]:
    return [text[s:e] for s, e in find_words(text)]


def sentences(text: str, **kw) -> list[str]:
    seg = segment(text, **kw)
    return [seg.unit_text("sentence", i) for i in range(len(seg.spans("sentence")))]


def documents(text: str, **kw) -> list[str]:
    seg = segment(text, **kw)
    return [seg.unit_text("document", i) for i in range(len(seg.spans("document")))]


def boundaries(text: str) -> set[int]:
    return {0} | {m.end() for m in _GRAPHEME.finditer(text)}


# ---------------------------------------------------------------- words


def test_plain_words_and_punctuation_stay_attached():
    assert words("Hello, world!  How are\tyou?\n") == ["Hello,", "world!", "How", "are", "you?"]
    assert words("   ") == [] and words("") == []


@pytest.mark.parametrize("text, expected", [
    ("cafe\u0301 na\u0308ive", ["cafe\u0301", "na\u0308ive"]),  # combining accents
    ("a\u0308\u0301\u0323b", ["a\u0308\u0301\u0323b"]),  # stacked marks
    ("क्षत्रिय नमस्ते", ["क्षत्रिय", "नमस्ते"]),  # Devanagari conjuncts
    # a space carrying a mark is one grapheme: the word takes it whole
    ("x \u0301y", ["x \u0301y"]),
    ("x \u0301 y", ["x \u0301", "y"]),
])
def test_combining_marks_are_never_split(text, expected):
    assert words(text) == expected
    for s, e in find_words(text):
        assert s in boundaries(text) and e in boundaries(text)


@pytest.mark.parametrize("emoji", [
    "👨\u200d👩\u200d👧\u200d👦",  # family ZWJ sequence
    "🏳\ufe0f\u200d🌈",  # rainbow flag
    "🧑🏾\u200d💻",  # skin tone + ZWJ
    "👍🏽",  # skin tone modifier
    "❤\ufe0f",  # variation selector
    "1\ufe0f\u20e3",  # keycap
    "🇺🇸",  # regional-indicator flag
])
def test_emoji_sequences_are_one_unit(emoji):
    text = f"ok {emoji} go {emoji}{emoji} end"
    got = words(text)
    assert got == ["ok", emoji, "go", emoji + emoji, "end"]
    for s, e in find_words(text):
        assert s in boundaries(text) and e in boundaries(text)


def test_flags_pair_up():
    text = "🇺🇸🇬🇧🇯🇵"
    (span,) = find_words(text)
    assert span == (0, len(text))
    assert boundaries(text) == {0, 2, 4, 6}


@pytest.mark.parametrize("text, expected", [
    ("漢字", ["漢", "字"]),
    ("日本語のテキスト", list("日本語のテキスト")),
    ("我爱北京。", ["我", "爱", "北", "京", "。"]),
    ("abc漢字def", ["abc", "漢", "字", "def"]),
    ("ภาษาไทย", [m.group() for m in _GRAPHEME.finditer("ภาษาไทย")]),
    ("한국어 문장", ["한국어", "문장"]),  # Hangul is written with spaces
])
def test_unspaced_scripts_give_one_word_per_grapheme(text, expected):
    assert words(text) == expected


def test_find_words_with_range_gives_absolute_offsets():
    text = "zero one two three"
    assert find_words(text, 5, 12) == [(5, 8), (9, 12)]


def test_zero_width_space_separates_words():
    assert words("a\u200bb\u200b\u200b c.\u200bD") == ["a", "b", "c.", "D"]
    assert sentences("One.\u200b\u200bTwo.") == ["One.", "Two."]


def test_numbered_headings_and_items_keep_their_line():
    text = "Intro.\n2. Products\n  3) Operations\nWe shipped 5. Then 6.\n(4) x\n1999. Y"
    assert sentences(text) == ["Intro.", "2. Products", "3) Operations", "We shipped 5.",
                               "Then 6.", "(4) x", "1999.", "Y"]


def test_crlf_is_whitespace():
    assert words("a\r\nb\r\n") == ["a", "b"]
    assert sentences("a\r\nb") == ["a", "b"]


# ---------------------------------------------------------------- sentences


def test_sentence_ends():
    assert sentences("One. Two! Three? Four... Five… Six?! Seven") == [
        "One.", "Two!", "Three?", "Four...", "Five…", "Six?!", "Seven"]


def test_closing_quotes_and_brackets_end_sentences():
    assert sentences('He said "stop." Then left. (It rained.) Next.') == [
        'He said "stop."', "Then left.", "(It rained.)", "Next."]


@pytest.mark.parametrize("text", [
    "Dr. Smith arrived. He sat.",
    "Mr. and Mrs. Jones left. They waved.",
    "Use tools, e.g. hammers. Others too.",
    "One thing, i.e. this one. Done.",
    "See fig. 2 for that. Then stop.",
    "Meet J. Doe today. He waits.",
    "It costs approx. five euros. Cheap.",
])
def test_abbreviations_and_initials_do_not_end_sentences(text):
    assert len(sentences(text)) == 2, sentences(text)


def test_decimal_numbers_do_not_end_sentences():
    assert sentences("Pi is 3.14 roughly. Next one.") == ["Pi is 3.14 roughly.", "Next one."]


def test_cjk_sentence_ends():
    assert sentences("你好。世界！真的吗？是") == ["你好。", "世界！", "真的吗？", "是"]


def test_line_breaks_end_sentences():
    assert sentences("no punctuation here\nnext line\n  indented line") == [
        "no punctuation here", "next line", "indented line"]


def test_lines_mode_ignores_punctuation():
    assert sentences("x = 1. y = 2\nz = 3", sentences="lines") == ["x = 1. y = 2", "z = 3"]
    with pytest.raises(ValueError):
        segment("x", sentences="words")


# ---------------------------------------------------------------- documents


def test_blank_line_starts_a_new_document():
    text = "First doc. Still first.\n\nSecond doc.\n \n\t\nThird.\nstill third"
    assert documents(text) == ["First doc. Still first.", "Second doc.", "Third.\nstill third"]
    seg = segment(text)
    # a new document is also a new sentence
    assert len(seg.spans("sentence")) == 5


def test_document_breaks_given_by_offsets():
    text = "a b c d"
    assert documents(text, document_breaks=[0, 2, 4]) == ["a", "b", "c d"]
    # with explicit breaks, blank lines do not split documents
    assert documents("a\n\nb", document_breaks=[0]) == ["a\n\nb"]


def test_parent_and_spans_api():
    seg = segment("One two. Three.\n\nFour")
    assert seg.n_words == 4
    assert seg.parent("word").tolist() == [0, 1, 2, 3]
    assert seg.parent("sentence").tolist() == [0, 0, 1, 2]
    assert seg.parent("document").tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError):
        seg.parent("paragraph")
    assert seg.unit_text("document", 1) == "Four"


def test_empty_text():
    seg = segment("")
    assert seg.n_words == 0
    assert seg.spans("sentence").shape == (0, 2)
    assert group_spans(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)).shape == \
        (0, 2)


# ---------------------------------------------------------------- properties

_ATOMS = ["the", "Dr.", "e.g.", "end.", "why?", "wow!", "3.14", "漢", "字。", "👨\u200d👩\u200d👧",
          "🇺🇸", "e\u0301", "\u0301", "\u200d", "a\u0308", "«quote»", "(x)", "…", "ok"]
_GAPS = [" ", "  ", "\n", "\n\n", "\n  \n", "\t", "\r\n", "\u3000", ""]


@st.composite
def seg_texts(draw):
    parts = draw(st.lists(st.one_of(st.sampled_from(_ATOMS),
                                    st.text(st.characters(exclude_categories=("Cs",)),
                                            max_size=3)),
                          max_size=30))
    gaps = draw(st.lists(st.sampled_from(_GAPS), min_size=len(parts), max_size=len(parts)))
    return "".join(p + g for p, g in zip(parts, gaps, strict=True))


@settings(max_examples=300, deadline=None)
@given(text=seg_texts())
def test_segmentation_properties(text):
    seg = segment(text)
    bounds = boundaries(text)
    w = seg.words
    # words: ordered, non-empty, non-overlapping, on grapheme boundaries, not all whitespace
    for k, (s, e) in enumerate(w):
        assert s < e and s in bounds and e in bounds
        assert not _SPACE.fullmatch(text[s:e])
        if k:
            assert w[k - 1, 1] <= s
    # what lies between words is whitespace only
    ends = [0, *w[:, 1].tolist()]
    starts = [*w[:, 0].tolist(), len(text)]
    for a, b in zip(ends, starts, strict=True):
        assert _SPACE.fullmatch(text[a:b]), repr(text[a:b])
    # sentences and documents: runs of consecutive words, numbered in order, nested
    word_starts, word_ends = set(w[:, 0].tolist()), set(w[:, 1].tolist())
    for level in ("sentence", "document"):
        parent = seg.parent(level)
        if len(parent):
            assert parent[0] == 0
            assert np.all(np.diff(parent) >= 0) and np.all(np.diff(parent) <= 1)
        for s, e in seg.spans(level):
            assert s in word_starts and e in word_ends  # every boundary is a word boundary
    if len(w):
        # a document boundary is always a sentence boundary
        new_doc = np.diff(seg.document_of) > 0
        assert np.all(np.diff(seg.sentence_of)[new_doc] > 0)
