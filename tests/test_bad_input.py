"""Library-level bad input: every user mistake raises a tokensieve error that names the
problem, never a raw TypeError / IndexError from deep inside."""

from __future__ import annotations

import json

import pytest

import tokensieve
from tokensieve import BudgetError, InputError, TokensieveError, UsageError, compress

TEXT = ("The committee met on Tuesday. Revenue grew 12% to 48.2 million. Costs were flat. "
        "The board approved the plan and adjourned early.")


def ws(s: str) -> list[str]:
    return s.split()


def call(text=TEXT, **kw):
    kw.setdefault("method", "random")
    kw.setdefault("tokenizer", ws)
    return compress(text, **kw)


def raises(exc_type, match, **kw):
    with pytest.raises(exc_type, match=match) as info:
        call(**kw)
    assert isinstance(info.value, TokensieveError)
    assert str(info.value).strip()
    return info.value


def test_error_hierarchy():
    assert issubclass(UsageError, InputError) and issubclass(InputError, ValueError)
    for cls in (InputError, UsageError, BudgetError, tokensieve.ModelNotFoundError):
        assert issubclass(cls, TokensieveError)


# ---------------------------------------------------------------- the text itself


@pytest.mark.parametrize("text", ["", " ", "   \n\t  \r\n", "\u3000\u00a0"])
def test_empty_or_whitespace_text(text):
    raises(InputError, "empty or only whitespace", text=text)


@pytest.mark.parametrize("data, where", [
    (b"\xff\xfe hello", "byte 0"),
    (b"hello \xc3\x28 world", "byte 6"),
    (b"truncated \xe2\x82", "byte 10"),
    (bytearray(b"ok \x80"), "byte 3"),
])
def test_invalid_utf8_bytes(data, where):
    raises(InputError, f"not valid UTF-8 \\({where}\\)", text=data)


def test_valid_utf8_bytes_are_accepted():
    r = call(text=TEXT.encode("utf-8"), keep=0.5)
    assert r.compressed_tokens <= r.target_tokens


def test_lone_surrogate_is_not_utf8():
    raises(InputError, "not valid UTF-8.*surrogate", text="abc \ud800 def ghi")


@pytest.mark.parametrize("text", ["abc\x00def", "\x00" * 10, b"\x00\x01\x02binary\x00".decode()])
def test_nul_or_binary_text(text):
    raises(InputError, "NUL bytes", text=text)


def test_binary_bytes():
    raises(InputError, "NUL bytes", text=b"abc\x00\x00def")
    # a PNG header is not even UTF-8
    raises(InputError, "not valid UTF-8", text=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")


@pytest.mark.parametrize("text", [None, 5, 3.5, {"a": 1}, object()])
def test_text_of_wrong_type(text):
    raises(InputError, "text must be a string", text=text)


def test_document_lists():
    raises(InputError, "list of documents is empty", text=[])
    raises(InputError, "document 1 is a int", text=["fine", 3])
    raises(InputError, "empty or only whitespace", text=["", "  "])


# ---------------------------------------------------------------- the budget


@pytest.mark.parametrize("ratio", [0, 0.0, 1.5, -1, float("nan"), float("inf"), True, "0.5"])
def test_bad_ratio(ratio):
    err = raises(UsageError, "keep is the fraction of tokens to keep and must be in \\(0, 1\\]",
                 keep=ratio)
    assert repr(ratio) in str(err)


@pytest.mark.parametrize("target", [0, -3, 2.5, "10", True])
def test_bad_target_tokens(target):
    raises(UsageError, "target must be a positive whole number", target_tokens=target)


def test_ratio_and_target_together():
    raises(UsageError, "either keep \\(a fraction\\) or a target", keep=0.5, target_tokens=5)


def test_protected_text_over_budget():
    err = raises(BudgetError, "protected text alone needs 3 tokens but the budget is 2",
                 target_tokens=2, keep_text=["committee", "Revenue", "board"])
    assert "allow-over-budget" in str(err)


def test_json_structure_over_budget():
    text = json.dumps({"alpha": 1, "beta": [1, 2, 3], "gamma": "some words to cut here"})
    raises(BudgetError, "JSON structure .* alone needs", text=text, format="json",
           target_tokens=2)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("method", ["nope", "", "RANDOM", None, ["random"]])
def test_unknown_method(method):
    err = raises(UsageError, "unknown method", method=method)
    assert "random" in str(err) and "lexrank" in str(err)  # lists the choices


@pytest.mark.parametrize("granularity", ["paragraph", "", None, "words"])
def test_unknown_granularity(granularity):
    err = raises(UsageError, "unknown granularity", granularity=granularity)
    assert "sentence" in str(err)


@pytest.mark.parametrize("fmt", ["xml", "", None, "JSON"])
def test_unknown_format(fmt):
    err = raises(UsageError, "unknown format", format=fmt)
    assert "markdown" in str(err)


@pytest.mark.parametrize("text", ['{"a": 1', "{'a': 1}", "not json at all", '{"a": 1} trailing',
                                  "[1, 2,]"])
def test_malformed_json(text):
    err = raises(InputError, "not valid JSON", text=text, format="json")
    assert "line" in str(err) and "column" in str(err)


def test_json_with_character_spans():
    raises(UsageError, "character spans cannot be protected with format='json'",
           text='{"a": "one two three four five"}', format="json", keep_spans=[(0, 3)])


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*star", "a{2,1}", "a)", "\\",
                                     r"\p{NotAProp}"])
def test_invalid_protect_regex(pattern):
    err = raises(UsageError, "invalid protect regex", protect=[pattern])
    assert pattern in str(err)


@pytest.mark.parametrize("protect", [[""], [None], [3]])
def test_empty_or_non_string_protect_pattern(protect):
    raises(UsageError, "protect patterns must be non-empty regex strings", protect=protect)


@pytest.mark.parametrize("keep", [[""], [None], [b"bytes"]])
def test_empty_or_non_string_keep_literal(keep):
    raises(UsageError, "protected literals must be non-empty strings", keep_text=keep)


def test_protect_options_not_lists():
    raises(UsageError, "protect must be a list", protect=5)
    raises(UsageError, "keep_spans must be a list", keep_spans=7)


def test_single_string_protect_is_one_pattern():
    # a bare string is one pattern / literal, not a list of its characters
    r = call(keep=0.3, protect=r"48\.2", keep_text="Revenue")
    assert "48.2" in r.text and "Revenue" in r.text
    # None means nothing protected
    assert call(keep=0.3, protect=None, keep_text=None, keep_spans=None).text


@pytest.mark.parametrize("span", [(0, 10_000), (-1, 3), (5, 2), (4, 4), (len(TEXT), len(TEXT) + 1)])
def test_keep_spans_out_of_range(span):
    err = raises(UsageError, "outside the text", keep_spans=[span])
    assert f"length {len(TEXT)}" in str(err)


@pytest.mark.parametrize("span", [("a", "b"), (1,), (1, 2, 3), 7, None])
def test_keep_spans_not_pairs(span):
    raises(UsageError, "must be \\(start, end\\) pairs", keep_spans=[span])


@pytest.mark.parametrize("method, granularity", [
    ("lexrank", "word"), ("lexrank", "token"), ("bm25", "word"), ("encoder", "word"),
])
def test_scorer_level_mismatch(method, granularity):
    err = raises(UsageError, f"the '{method}' scorer ranks sentence / document units, not "
                             f"{granularity}s", method=method, granularity=granularity,
                 question="what grew?")
    assert "--granularity" in str(err)


@pytest.mark.parametrize("question", [None, "", "   \n"])
@pytest.mark.parametrize("method", ["bm25"])
def test_question_needed(method, question):
    raises(UsageError, f"the '{method}' scorer ranks text by relevance to a question",
           method=method, question=question, granularity="sentence")


def test_question_of_wrong_type():
    raises(UsageError, "question must be a string", question=42)


def test_code_format_granularity():
    raises(UsageError, "format='code' drops whole comment lines only",
           text="x = 1\n# comment\n", format="code", granularity="word")


@pytest.mark.parametrize("seed", [-1, "x", 1.5, None, True])
def test_bad_seed(seed):
    raises(UsageError, "seed must be a non-negative whole number", seed=seed)


@pytest.mark.parametrize("tokenizer", [5, 3.5, object()])
def test_tokenizer_not_callable(tokenizer):
    raises(UsageError, "tokenizer must be a Hugging Face tokenizer", tokenizer=tokenizer)


@pytest.mark.parametrize("tokenizer", [lambda s: None, lambda s: 2.5, lambda s: object()])
def test_tokenizer_returning_nonsense(tokenizer):
    raises(UsageError, "a tokenizer callable must return an int count or a sequence",
           tokenizer=tokenizer)


# ---------------------------------------------------------------- already within budget


@pytest.mark.parametrize("budget", [{"keep": 1.0}, {"target_tokens": 10_000}])
def test_within_budget_comes_back_unchanged_with_a_note(budget):
    r = call(**budget)
    assert r.text == TEXT
    assert r.kept_spans == [(0, len(TEXT))]
    assert r.compressed_tokens == r.original_tokens == len(TEXT.split())
    assert any("within the budget" in n and "unchanged" in n for n in r.notes)


def test_within_budget_json_unchanged():
    text = '{"k": "short text", "n": 3}'
    r = call(text=text, format="json", keep=1.0)
    assert r.text == text and any("unchanged" in n for n in r.notes)


def test_a_keep_below_one_token_still_keeps_one():
    r = call(text="one two three four", keep=0.2)  # 0.8 tokens: engine.keep_count gives 1
    assert r.target_tokens == 1 and r.compressed_tokens == 1
    assert r.text in ("one", "two", "three", "four")


def test_json_without_strings_over_budget():
    text = json.dumps([1, 2, 3, 4, 5, 6, 7, 8], indent=4)  # long, but no string to cut
    with pytest.raises(BudgetError, match="JSON structure"):
        call(text=text, format="json", tokenizer=len, keep=0.2)
    # re-serialising alone may fit: then it is valid JSON within budget
    r = call(text=text, format="json", tokenizer=len, keep=0.9)
    assert json.loads(r.text) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert r.compressed_tokens <= r.target_tokens


def test_allow_over_budget_keeps_only_protected_and_says_so():
    r = call(target_tokens=2, keep_text=["committee", "Revenue", "board"], allow_over_budget=True)
    assert r.text.split() == ["committee", "Revenue", "board"]
    assert r.compressed_tokens == 3 > r.target_tokens
    assert any("over by 1" in n for n in r.notes)


def test_old_budget_spellings():
    """``ratio`` still works (same meaning, deprecated); a list for ``keep`` names keep_text."""
    with pytest.warns(DeprecationWarning, match="keep"):
        r = call(ratio=0.5)
    assert r.compressed_tokens <= r.target_tokens == r.original_tokens // 2
    raises(UsageError, "keep_text", keep=["Revenue"])
