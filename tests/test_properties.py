"""Property tests of ``compress`` without any model: random texts (unicode, CJK, emoji,
combining marks, newlines, indentation), random budgets, model-free scorers and plain
Python tokenizers. The invariants are the ones DESIGN.md lists for the text place."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import regex
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tokensieve import BudgetError, compress
from tokensieve.scoring.segment import segment
from tokensieve.text.counting import TokenCounter
from tokensieve.text.numbers import number_spans

# ---------------------------------------------------------------- tokenizers


def ws_tokenizer(s: str) -> list[str]:
    return s.split()


_REGEX_TOKEN = regex.compile(r"\w+|[^\w\s]")


def regex_tokenizer(s: str) -> list[str]:
    return _REGEX_TOKEN.findall(s)


def tiny_hf_tokenizer():
    """A byte-level BPE Hugging Face fast tokenizer trained in memory (no download): it
    exercises the HF counting path (offsets) and granularity='token'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the model budget revenue grew quickly, token tokens naive café "
                            "漢字 かな 😀 e.g. Dr. Smith 3.14 1,000"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk)


TOKENIZERS = {"whitespace": ws_tokenizer, "chars": len, "regex": regex_tokenizer,
              "hf-bpe": tiny_hf_tokenizer()}
tokenizer_names = st.sampled_from(sorted(TOKENIZERS))

# ---------------------------------------------------------------- texts

WORDS = [
    "the", "a", "model", "token", "budget", "Revenue", "grew", "quickly", "x", "I",
    "naïve", "café", "straße", "Ελλάδα", "москва", "مرحبا", "שלום", "नमस्ते", "e\u0301",
    "n\u0303o", "a\u0308\u0301b", "Dr.", "Mr.", "e.g.", "i.e.", "etc.", "U.S.", "J.",
    "3.14", "42", "-7", "1,000", "12:30", "50%", "v1.2.3", "foo_bar", "x=1;", "(see", "it)",
    "\"quoted\"", "'single'", "«guillemets»", "http://ex.com/a?b=1",
]
CJK = ["漢", "字", "日本語", "かな", "カタカナ", "中文句子", "한국어", "ไทย", "ສະບາຍ"]
EMOJI = [
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇺🇸", "🇯🇵🇫🇷",
    "❤\ufe0f", "1\ufe0f\u20e3", "🧑🏾\u200d💻",
]
MARKS = ["\u0301", "\u0308", "\u20dd", "\u200d", "\ufe0f"]  # may land after a space
ENDS = [".", "!", "?", "...", "…", "。", "！", "？", "?!", ".\"", ".)", ":", ";", ","]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", "\n    ", "\n\t", "\t", "\r\n", "\n\n\n  ",
              "\u3000", "\u00a0", ""]

piece = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(CJK),
    st.sampled_from(EMOJI),
    st.sampled_from(MARKS),
    st.sampled_from(ENDS),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
            min_size=1, max_size=4),
)


@st.composite
def texts(draw, min_pieces: int = 1, max_pieces: int = 40) -> str:
    n = draw(st.integers(min_pieces, max_pieces))
    parts = []
    for _ in range(n):
        parts.append(draw(piece))
        parts.append(draw(st.sampled_from(SEPARATORS)))
    lead = draw(st.sampled_from(["", "", "  ", "\n", "\t  "]))
    text = lead + "".join(parts)
    assume(text.strip() and "\x00" not in text)
    return text


ratios = st.floats(0.05, 1.0, allow_nan=False, exclude_min=False)
# (method, granularity, needs a question)
METHODS = [
    ("random", "auto"), ("random", "word"), ("random", "sentence"), ("random", "document"),
    ("wordfreq", "auto"), ("wordfreq", "word"), ("wordfreq", "sentence"),
    ("lexrank", "auto"), ("lexrank", "sentence"), ("lexrank", "document"),
    ("bm25", "auto"), ("bm25", "sentence"), ("bm25", "document"),
]
methods = st.sampled_from(METHODS)
QUESTION = "What did the model budget say about revenue?"


@st.composite
def budgets(draw) -> dict:
    if draw(st.booleans()):
        return {"keep": draw(ratios)}
    return {"target_tokens": draw(st.integers(1, 120))}


def run(text, method, granularity, tok, budget, **kw):
    return compress(text, method=method, granularity=granularity,
                    question=QUESTION if method == "bm25" else None,
                    tokenizer=TOKENIZERS[tok], **budget, **kw)


# ---------------------------------------------------------------- helpers

_GRAPHEME = regex.compile(r"\X")


def grapheme_boundaries(text: str) -> set[int]:
    return {0} | {m.end() for m in _GRAPHEME.finditer(text)}


def check_spans(text: str, r) -> None:
    """The output is an ordered concatenation of non-empty, non-touching input spans."""
    assert r.text == "".join(text[s:e] for s, e in r.kept_spans)
    prev_end = -1
    for s, e in r.kept_spans:
        assert 0 <= s < e <= len(text)
        assert s > prev_end  # strictly increasing, non-overlapping, merged when touching
        prev_end = e


def check_budget(r, tok: str, budget: dict) -> None:
    counted = TokenCounter(TOKENIZERS[tok]).count(r.text)
    assert counted == r.compressed_tokens
    assert r.compressed_tokens <= r.target_tokens
    if "keep" in budget:
        exact = budget["keep"] * r.original_tokens
        # floor(ratio * original), with a 1e-9 tolerance for float noise (0.29 * 100), and
        # at least one token (engine.keep_count, the rule of every place)
        assert r.target_tokens == max(1, math.floor(exact + 1e-9))
        assert r.target_tokens <= max(1, exact + 1e-6)
    else:
        assert r.target_tokens == min(budget["target_tokens"], r.original_tokens)


def covered(spans: list[tuple[int, int]], s: int, e: int) -> bool:
    """Is [s, e) inside one kept span (so it appears contiguous and verbatim)?"""
    return any(a <= s and e <= b for a, b in spans)


def strip_span(text: str, s: int, e: int) -> tuple[int, int]:
    """A protected span without its leading / trailing whitespace (whitespace alone is not
    a unit of selection; the words inside the span and the gaps between them are)."""
    seg = text[s:e]
    lead = len(regex.match(r"\s*", seg)[0])
    trail = len(regex.search(r"\s*$", seg[lead:])[0])
    return s + lead, e - trail


FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ---------------------------------------------------------------- (1) + (2) + (5)


@FAST
@given(text=texts(), m=methods, tok=tokenizer_names, budget=budgets(),
       seed=st.integers(0, 2**32 - 1))
def test_output_is_input_spans_within_budget_on_grapheme_boundaries(text, m, tok, budget, seed):
    method, granularity = m
    r = run(text, method, granularity, tok, budget, seed=seed)
    check_spans(text, r)
    check_budget(r, tok, budget)
    assert r.original_tokens == TokenCounter(TOKENIZERS[tok]).count(text)
    bounds = grapheme_boundaries(text)
    for s, e in r.kept_spans:
        assert s in bounds and e in bounds, (s, e, text[max(0, s - 2) : e + 2])
    if r.original_tokens <= r.target_tokens:
        assert r.text == text and r.notes
    if tok == "chars" and not r.text and granularity != "auto":
        # nothing kept at a single level: only right when no unit fits alone (with the
        # whitespace before it; 'chars' counts are additive, so this is what it costs).
        # (With several levels a tiny budget may legitimately end empty: a coarse level
        # keeps the best units, which the finer level may then find too big.)
        level = granularity
        seg = segment(text)
        ends = seg.words[:, 1]
        for s, e in seg.spans(level):
            before = ends[ends <= s]
            # a unit costs the whitespace before it; the first one its line's indentation
            start = int(before[-1]) if len(before) else text.rfind("\n", 0, s) + 1
            assert len(text[start:e]) > r.target_tokens, text[s:e]
    # scores cover the finest units, in order, and say which were kept
    starts = [u.start for u in r.scores]
    assert starts == sorted(starts)
    for u in r.scores:
        assert u.text == text[u.start : u.end]
        if u.kept:
            assert covered(r.kept_spans, u.start, u.end)
        else:
            assert not any(a < u.end and u.start < b for a, b in r.kept_spans)


@FAST
@given(text=texts(), method=st.sampled_from(["random", "wordfreq"]), budget=budgets(),
       seed=st.integers(0, 1000))
def test_token_granularity_with_a_hf_tokenizer(text, method, budget, seed):
    r = compress(text, method=method, granularity="token", tokenizer=TOKENIZERS["hf-bpe"],
                 seed=seed, **budget)
    check_spans(text, r)
    check_budget(r, "hf-bpe", budget)
    bounds = grapheme_boundaries(text)
    for s, e in r.kept_spans:
        assert s in bounds and e in bounds
    for u in r.scores:
        assert u.start in bounds and u.end in bounds


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts(min_pieces=3), tok=tokenizer_names, n_docs=st.integers(1, 4),
       ratio=ratios, seed=st.integers(0, 1000))
def test_list_of_documents(text, tok, n_docs, ratio, seed):
    docs = [text] * n_docs
    r = compress(docs, keep=ratio, method="random", tokenizer=TOKENIZERS[tok], seed=seed)
    joined = "\n\n".join(docs)
    check_spans(joined, r)
    check_budget(r, tok, {"keep": ratio})


# ---------------------------------------------------------------- (3) protection


@st.composite
def protections(draw, text: str) -> dict:
    kind = draw(st.sampled_from(["regex", "literal", "span", "numbers", "mixed"]))
    out: dict = {}
    words = [text[s:e] for s, e in segment(text).words]
    if kind in ("regex", "mixed"):
        out["protect"] = [draw(st.sampled_from([r"\d+", r"[A-Z]\w+", r"model \w+", r"\p{Han}",
                                                r"e\.g\.", r"[😀👍]", r"budget"]))]
    if kind in ("literal", "mixed") and words:
        out["keep_text"] = [draw(st.sampled_from(words))]
    if kind in ("span", "mixed"):
        s = draw(st.integers(0, len(text) - 1))
        e = draw(st.integers(s + 1, min(len(text), s + 30)))
        out["keep_spans"] = [(s, e)]
    if kind == "numbers":
        out["keep_numbers"] = True
    return out


@FAST
@given(data=st.data(), text=texts(), m=methods, tok=tokenizer_names, budget=budgets())
def test_protected_text_survives_or_budget_error(data, text, m, tok, budget):
    method, granularity = m
    prot = data.draw(protections(text))
    try:
        r = run(text, method, granularity, tok, budget, **prot)
    except BudgetError as exc:
        assert "protected" in str(exc) and "budget" in str(exc)
        # the error is only right when the protected words alone do not fit
        forced_only = run(text, method, granularity, tok, budget, **prot,
                          allow_over_budget=True)
        assert forced_only.compressed_tokens > forced_only.target_tokens
        assert any("protected" in n for n in forced_only.notes)
        check_spans(text, forced_only)
        return
    check_spans(text, r)
    check_budget(r, tok, budget)
    spans = []
    for pat in prot.get("protect", []):
        spans += [mt.span() for mt in regex.finditer(pat, text) if mt.end() > mt.start()]
    for lit in prot.get("keep_text", []):
        spans += [(mt.start(), mt.end()) for mt in regex.finditer(regex.escape(lit), text,
                                                               overlapped=True)]
    spans += list(prot.get("keep_spans", []))
    if prot.get("keep_numbers"):  # never cut: a number is kept whole or dropped whole
        for a, b in number_spans(text):
            a, b = strip_span(text, a, b)
            assert covered(r.kept_spans, a, b) or not any(
                s < b and a < e for s, e in r.kept_spans), (text[a:b], r.text)
    for s, e in spans:
        s2, e2 = strip_span(text, s, e)
        if s2 >= e2:
            continue  # whitespace only
        assert covered(r.kept_spans, s2, e2), (text[s:e], r.text)
        assert text[s2:e2] in r.text


def test_protected_words_alone_over_budget_raises_then_allowed():
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    KEEP6 = ["alpha", "gamma", "delta", "epsilon", "iota", "kappa"]  # no substring of another
    with pytest.raises(BudgetError, match="protected text alone needs 6 tokens"):
        compress(text, target_tokens=3, method="random", tokenizer=ws_tokenizer,
                 keep_text=KEEP6)
    r = compress(text, target_tokens=3, method="random", tokenizer=ws_tokenizer,
                 keep_text=KEEP6,
                 allow_over_budget=True)
    assert r.text == "alpha gamma delta epsilon iota kappa"
    assert r.compressed_tokens == 6 and r.target_tokens == 3
    assert any("over by 3" in n for n in r.notes)


# ---------------------------------------------------------------- (4) JSON

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    texts(max_pieces=12), st.sampled_from(["", " ", "\n"]),
)
json_values = st.recursive(
    json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=12,
)


def blank_strings(o, keep_blank: bool = False):
    """``o`` with its string values emptied (blank ones kept as they are if asked)."""
    if isinstance(o, str):
        return o if keep_blank and not o.strip() else ""
    if isinstance(o, list):
        return [blank_strings(v, keep_blank) for v in o]
    if isinstance(o, dict):
        return {k: blank_strings(v, keep_blank) for k, v in o.items()}
    return o


def strings_of(o) -> list[str]:
    if isinstance(o, str):
        return [o]
    if isinstance(o, list):
        return [s for v in o for s in strings_of(v)]
    if isinstance(o, dict):
        return [s for v in o.values() for s in strings_of(v)]
    return []


@FAST
@given(obj=json_values, indent=st.sampled_from([None, 2, 4]), ascii_=st.booleans(),
       tok=tokenizer_names, budget=budgets(), method=st.sampled_from(["random", "wordfreq"]),
       granularity=st.sampled_from(["auto", "word", "sentence"]))
def test_json_stays_valid_json_with_keys_and_numbers(obj, indent, ascii_, tok, budget, method,
                                                     granularity):
    text = json.dumps(obj, indent=indent, ensure_ascii=ascii_)
    assume(text.strip())
    try:
        r = compress(text, format="json", method=method, granularity=granularity,
                     tokenizer=TOKENIZERS[tok], **budget)
    except BudgetError as exc:
        # only right when the structure alone (blank strings stay blank) does not fit
        assert "JSON" in str(exc)
        skeleton = json.dumps(blank_strings(obj, keep_blank=True), ensure_ascii=False,
                              indent=2 if "\n" in text.strip() else None)
        target = min(budget.get("target_tokens", 10**9), TokenCounter(TOKENIZERS[tok]).count(text))
        if "keep" in budget:
            n = TokenCounter(TOKENIZERS[tok]).count(text)
            target = max(1, math.floor(budget["keep"] * n + 1e-9))
        assert TokenCounter(TOKENIZERS[tok]).count(skeleton) > target, str(exc)
        return
    out = json.loads(r.text)
    assert blank_strings(out) == blank_strings(obj)  # keys, numbers, structure
    assert r.compressed_tokens == TokenCounter(TOKENIZERS[tok]).count(r.text)
    assert r.compressed_tokens <= r.target_tokens
    before, after = strings_of(obj), strings_of(out)
    assert len(before) == len(after)
    if r.text == text:
        return
    # every compressed value is made of spans of the original values, in order
    values = [v for v in before if v.strip()]
    joined = "\n\n".join(values)
    assert "".join(joined[s:e] for s, e in r.kept_spans) == "".join(
        a for a, b in zip(after, before, strict=True) if b.strip())
    for a, b in zip(after, before, strict=True):
        if not b.strip():
            assert a == b


def test_json_protected_literal_survives():
    obj = {"id": 7, "name": "Quarterly report", "body": "Revenue grew to 48.2 million "
           "dollars in the third quarter, while costs stayed flat and margins improved.",
           "tags": ["finance", "q3"], "nested": {"note": "call the CFO about it tomorrow"}}
    text = json.dumps(obj)
    r = compress(text, format="json", keep=0.7, method="random", tokenizer=ws_tokenizer,
                 keep_text=["48.2"])
    out = json.loads(r.text)
    assert "48.2" in out["body"]
    assert out["id"] == 7 and out["tags"][1] in ("q3", "") and set(out) == set(obj)
    assert r.compressed_tokens <= r.target_tokens


# ---------------------------------------------------------------- (6) determinism


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts(min_pieces=5), m=methods, tok=tokenizer_names, budget=budgets(),
       seed=st.integers(0, 2**31 - 1))
def test_same_seed_same_output(text, m, tok, budget, seed):
    method, granularity = m
    a = run(text, method, granularity, tok, budget, seed=seed)
    b = run(text, method, granularity, tok, budget, seed=seed)
    assert a.text == b.text and a.kept_spans == b.kept_spans
    assert [u.score for u in a.scores] == [u.score for u in b.scores]


def test_different_seeds_differ_for_random():
    text = " ".join(f"w{i}" for i in range(200))
    outs = {compress(text, keep=0.3, method="random", tokenizer=ws_tokenizer, seed=s).text
            for s in range(5)}
    assert len(outs) > 1


# ---------------------------------------------------------------- (7) whole sentences


@FAST
@given(text=texts(min_pieces=3), method=st.sampled_from(["random", "wordfreq", "lexrank", "bm25"]),
       level=st.sampled_from(["sentence", "document"]), tok=tokenizer_names, budget=budgets())
def test_sentence_and_document_granularity_keep_whole_units(text, method, level, tok, budget):
    r = run(text, method, level, tok, budget)
    check_spans(text, r)
    check_budget(r, tok, budget)
    seg = segment(text)
    parent = seg.parent(level)
    kept = np.array([u.kept for u in r.scores], dtype=bool)
    assert len(kept) == seg.n_words
    for unit in np.unique(parent):
        members = kept[parent == unit]
        assert members.all() or not members.any(), seg.unit_text(level, int(unit))
    # the output is those units' text in order (plus the whitespace between them)
    units = seg.spans(level)
    kept_units = [text[s:e] for k, (s, e) in enumerate(units) if kept[parent == k].all()]
    squeeze = regex.compile(r"\s+")
    assert squeeze.sub("", r.text) == squeeze.sub("", "".join(kept_units))


# ---------------------------------------------------------------- formats


@FAST
@given(data=st.data(), tok=tokenizer_names, budget=budgets())
def test_markdown_structure_survives(data, tok, budget):
    body = data.draw(texts(min_pieces=4, max_pieces=15))
    text = f"# Title here\n\n- item {body}\n\n```\ncode = 1\n```\n\n{body}\n"
    try:
        r = compress(text, format="markdown", method="random", tokenizer=TOKENIZERS[tok],
                     **budget)
    except BudgetError:
        return
    check_spans(text, r)
    assert r.compressed_tokens <= r.target_tokens
    assert "# Title here" in r.text
    # the fenced block is one unit: whole with its fences, or gone (never cut inside)
    block = "```\ncode = 1\n```"
    if "```" in r.text or "code = 1" in r.text:
        assert r.text.count(block) == 1 and r.text.count("```") == 2, r.text


def test_code_keeps_code_and_drops_comment_lines():
    code = (
        "import os\n"
        "# a long comment line explaining many things in great detail\n"
        "def f(x):\n"
        "    # another comment that says far too much about nothing\n"
        "    return x + 1  # trailing\n"
    )
    r = compress(code, format="code", keep=0.6, method="random", tokenizer=ws_tokenizer)
    for line in ("import os", "def f(x):", "    return x + 1  # trailing"):
        assert line in r.text
    assert r.compressed_tokens <= r.target_tokens
    check_spans(code, r)


CODE_LINES = ["import os", "x = 1", "def f(a, b):", "    return a + b", "class K:", "    pass",
              "print(f(1, 2))", "#include <stdio.h>", "#!/usr/bin/env python", "}", "{",
              "int main() { return 0; }", "    y = [i for i in range(3)]  # inline note"]
COMMENT_LINES = ["# a comment about the code below", "    # indented comment here",
                 "// C style comment line", "-- sql comment", "/* block on one line */"]


@FAST
@given(lines=st.lists(st.one_of(st.sampled_from(CODE_LINES), st.sampled_from(COMMENT_LINES),
                                st.just("")), min_size=1, max_size=25),
       tok=tokenizer_names, budget=budgets())
def test_code_lines_survive_whole(lines, tok, budget):
    text = "\n".join(lines) + "\n"
    assume(text.strip())
    try:
        r = compress(text, format="code", method="random", tokenizer=TOKENIZERS[tok], **budget)
    except BudgetError as exc:
        assert "code outside comments" in str(exc)
        return
    check_spans(text, r)
    check_budget(r, tok, budget)
    out_lines = r.text.split("\n")
    for line in lines:
        if line in CODE_LINES:
            assert line in out_lines  # code lines stay whole, indentation included
    for line in out_lines:
        assert not line.strip() or line in lines  # only whole input lines come out
