"""Prompt compression: segment, score coarse-to-fine, select under an exact token budget,
assemble from input spans, and verify the budget with the real tokenizer. The steps shared
with format='json' live in :mod:`.pipeline`; this module checks the options and runs them
on one text."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import regex

from ..engine.budget import Budget
from ..errors import BudgetError, InputError, UsageError
from ..inputs import decode_text
from ..scoring.segment import SPACE
from .json_format import compress_json
from .pipeline import (
    COARSE_SLACK,
    LEVELS,
    CompressOptions,
    LevelSelector,
    auto_finest,
    forced_only,
    join_documents,
    make_counter,
    method_scorers,
    prepare_units,
)
from .result import CompressionResult, ScoredUnit
from .scorers import SCORERS, ScoringContext

GRANULARITIES = ("auto", *LEVELS)
FORMATS = ("text", "markdown", "json", "code")
METHODS = ("default", *SCORERS)
__all__ = ["COARSE_SLACK", "FORMATS", "GRANULARITIES", "METHODS", "CompressOptions", "compress",
           "method_scorers"]


_BLANK = regex.compile(f"{SPACE}*")


def _check_text(text: Any) -> str:
    text = decode_text(text)
    if not isinstance(text, str):
        raise InputError(f"text must be a string or a list of strings, got {type(text).__name__}.")
    if _BLANK.fullmatch(text):
        raise InputError("input text is empty or only whitespace (or zero-width spaces); there is "
                         "nothing to compress.")
    return text


def _budget_fraction(keep, ratio):
    """``keep`` (the fraction kept), accepting the deprecated ``ratio`` and refusing the old
    use of ``keep`` for literal strings with the new name."""
    numeric = isinstance(keep, str) and regex.fullmatch(r"\s*[-+.\d eE]+\s*", keep)
    if isinstance(keep, list | tuple | set) or (isinstance(keep, str) and not numeric):
        raise UsageError("keep is the fraction of tokens to keep (e.g. keep=0.33); protect "
                         f"literal strings with keep_text={keep!r}.")
    if ratio is not None:
        if keep is not None:
            raise UsageError("give keep (the fraction kept) only; ratio is its old name.")
        warnings.warn("compress(ratio=...) is now compress(keep=...) (same meaning: the "
                      "fraction kept)", DeprecationWarning, stacklevel=3)
        return ratio
    return keep


def compress(
    text: str | Sequence[str] | bytes,
    *,
    keep: float | None = None,
    target_tokens: int | None = None,
    question: str | None = None,
    method: str = "default",
    granularity: str = "auto",
    protect: Sequence[str] = (),
    keep_text: Sequence[str] = (),
    keep_spans: Sequence[tuple[int, int]] = (),
    keep_numbers: bool = False,
    keep_names: bool = False,
    format: str = "text",
    tokenizer: Any = None,
    model: str = "default",
    encoder: str = "default",
    seed: int = 0,
    allow_over_budget: bool = False,
    progress: bool | None = None,
    window: int = 1024,
    dtype: str = "auto",
    device: str = "cpu",
    ratio: float | None = None,
    protect_timeout: float | None = None,
    finest: str | None = None,
) -> CompressionResult:
    """Compress a prompt to at most ``keep`` x its tokens (the fraction kept, as in every
    place of tokensieve) or ``target_tokens``; neither keeps half.

    ``protect``: regexes whose matches are kept byte for byte; ``keep_text``: literal
    strings; ``keep_spans``: (start, end) character spans; ``keep_numbers``: never cut a
    number or ID (12.5, 2024-01-15, Z9K6-4842; with its scale word, "$48.2 million"): each
    is kept whole or dropped whole, not charged first; ``keep_names``: the same for names,
    runs of 2-6 capitalised words ("Margaret Okonkwo"; method 'learned' always does both).
    ``protect_timeout``: seconds the
    ``protect`` regexes may run over the text, all together (an :class:`InputError` after;
    None: no limit). ``ratio`` is the old name of ``keep`` (same meaning; deprecated).
    Tokens are counted with ``tokenizer`` (a HF tokenizer, a callable or a model name;
    default: the scoring model's). ``format``: text, markdown, json or code.
    ``allow_over_budget``: when protected text alone exceeds the budget, keep just it and
    report instead of raising :class:`BudgetError`. ``window``: LM scoring window in tokens;
    ``dtype``: the scoring model's precision ('auto' = bfloat16 where the hardware runs it
    fast). ``device``: where the scoring models run: 'cpu' (default), 'cuda', 'cuda:N',
    'mps' or 'auto' (a GPU when there is one); a device this machine lacks is a
    :class:`UsageError`. ``finest``: the finest level ``granularity='auto'`` goes down to,
    'sentence' or 'word' (default None: chosen per method and format, see the README).
    """
    t0 = time.perf_counter()
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}; choose one of: "
                         f"{', '.join(GRANULARITIES)}.")
    if finest not in (None, "sentence", "word"):
        raise UsageError(f"finest must be 'sentence' or 'word' (or None: automatic), got "
                         f"{finest!r}.")
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}.")
    question = decode_text(question, "the question")
    if question is not None and not isinstance(question, str):
        raise UsageError("question must be a string.")
    question = question.strip() or None if question else None
    scorers = method_scorers(method, question)
    keep = _budget_fraction(keep, ratio)
    budget = Budget.from_options(keep, target_tokens)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"seed must be a non-negative whole number, got {seed!r}.")
    if format == "code" and granularity not in ("auto", "sentence"):
        raise UsageError("format='code' drops whole comment lines only; use granularity "
                         "'auto' or 'sentence'.")
    from ..models import resolve_device

    device = resolve_device(device)
    breaks = None
    if isinstance(text, list | tuple):
        text, breaks = join_documents(text)
    text = _check_text(text)
    counter = make_counter(tokenizer, model)
    ctx = ScoringContext(text, question, model, encoder, seed, progress, window, dtype, device)
    opts = CompressOptions(
        method=method, granularity=granularity, fmt=format, scorers=scorers, counter=counter,
        model=model, protect=protect, keep=keep_text, keep_spans=keep_spans,
        keep_numbers=keep_numbers, keep_names=keep_names, allow_over=allow_over_budget,
        protect_timeout=protect_timeout,
        timings={"setup": time.perf_counter() - t0})
    opts.finest = finest or auto_finest(method, question, format, opts.protects)
    if format == "json":
        result = compress_json(text, budget, ctx, opts)
    else:
        result = _compress_text(text, breaks, budget, ctx, opts)
    result.timings["total"] = time.perf_counter() - t0
    return result


def _compress_text(text: str, breaks: list[int] | None, budget: Budget, ctx: ScoringContext,
                   opts: CompressOptions) -> CompressionResult:
    t = time.perf_counter()
    counter, timings = opts.counter, opts.timings
    original = counter.count(text)
    target = budget.target(original)
    prep = prepare_units(text, breaks, opts)
    units, levels, forced = prep.units, prep.levels, prep.forced
    timings["segment"] = time.perf_counter() - t
    notes: list[str] = []

    def result(out, spans, n, scores, kept, label: str | None = None) -> CompressionResult:
        units_out = [ScoredUnit(int(s), int(e), text[s:e], float(sc), bool(k), bool(f))
                     for (s, e), sc, k, f in zip(units.spans, scores, kept, forced, strict=True)]
        return CompressionResult(out, original, n, target, spans, units_out, opts.method,
                                 label or "+".join(levels), opts.fmt, timings, notes)

    if original <= target:
        notes.append(f"the prompt has {original} tokens, within the budget of {target}; "
                     "returned unchanged")
        return result(text, [(0, len(text))], original, np.zeros(len(units.spans)),
                      np.ones(len(units.spans), bool))
    # protected text keeps its whole unit of the finest selected level (e.g. its sentence)
    unit_of = units.unit_of(levels[-1])
    must = (np.bincount(unit_of, weights=forced.astype(float)) > 0)[unit_of]
    needed = counter.count(forced_only(prep, must)[0]) if must.any() else 0
    if needed > target:
        what = "code outside comments" if opts.fmt == "code" else "protected text"
        msg = (f"{what} alone needs {needed} tokens but the budget is {target} "
               f"(over by {needed - target})")
        if not opts.allow_over:
            raise BudgetError(msg + "; raise the budget (keep / target tokens), protect less, "
                              "or allow going over budget (--allow-over-budget).")
        notes.append(msg + "; kept only the protected text, as asked")
        out, spans = forced_only(prep, must)
        return result(out, spans, needed, np.zeros(len(units.spans)), must)
    selector = LevelSelector(prep, opts.scorers, ctx, counter)
    t = time.perf_counter()
    sel = selector.run(target)
    timings["score_select"] = time.perf_counter() - t
    notes += sel.notes
    label = "+".join(levels + ([units.fine_level] if sel.cut else []))
    return result(sel.text, sel.spans, sel.tokens, sel.scores, sel.keep, label)
