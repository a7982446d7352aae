"""Prompt compression: segment, score coarse-to-fine, select under an exact token budget,
assemble from input spans, and verify the budget with the real tokenizer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..engine.budget import Budget
from ..engine.select import select_under_budget
from ..errors import BudgetError, InputError, UsageError
from .assemble import assemble
from .counting import TokenCounter
from .protect import protected_spans, words_touching
from .result import CompressionResult, ScoredUnit
from .scorers import (
    SCORERS,
    EncoderRelevanceScorer,
    QuestionAwareScorer,
    Scorer,
    ScoringContext,
    SurprisalScorer,
)
from .segment import segment
from .structure import code_droppable_lines, markdown_protected
from .units import Units, token_units, word_units

GRANULARITIES = ("auto", "document", "sentence", "word", "token")
FORMATS = ("text", "markdown", "json", "code")
METHODS = ("default", *SCORERS)
# coarse levels keep this many times the target, leaving the finer level room to choose
COARSE_SLACK = {"document": 2.0, "sentence": 1.4, "word": 1.0}
_ORDER = ("document", "sentence", "word", "token")


def method_scorers(method: str, question: str | None) -> dict[str, Scorer]:
    """The scorer for each level. 'default': with a question, encoder relevance for
    documents/sentences and question-aware surprisal for words; without one, LM surprisal
    at every level."""
    if method == "default":
        if question:
            rel, fine = EncoderRelevanceScorer(), QuestionAwareScorer()
            return {"document": rel, "sentence": rel, "word": fine, "token": fine}
        s = SurprisalScorer()
        return dict.fromkeys(_ORDER, s)
    if not isinstance(method, str) or method not in SCORERS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}.")
    s = SCORERS[method]()
    return dict.fromkeys(_ORDER, s)


def auto_finest(method: str, question: str | None, fmt: str, protects: bool) -> str:
    """The finest level 'auto' goes down to. With a question the default stops at whole
    sentences: on the held-out dev split (benchmarks/text/tune.py) sentence selection by
    relevance lost far less gold-answer likelihood than also pruning words (-3% vs +17%
    NLL at 4x) and kept every answer. With protected text it goes down to words, so that
    protecting a number does not force its whole sentence in. Code drops whole lines."""
    if fmt == "code" or (method == "default" and question and not protects):
        return "sentence"
    return "word"


def _levels(granularity: str, scorers: dict[str, Scorer], n_docs: int,
            finest: str) -> list[str]:
    if granularity == "auto":
        levels = [lv for lv in ("document", "sentence", "word") if lv in
                  scorers[lv].levels and _ORDER.index(lv) <= _ORDER.index(finest)]
        if n_docs <= 1 and len(levels) > 1:
            levels = [lv for lv in levels if lv != "document"]
        return levels
    scorers[granularity].check_level(granularity)
    return [granularity]


def _check_text(text: Any) -> str:
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"input is not valid UTF-8 (byte {exc.start}); "
                             "convert it to UTF-8 text first.") from exc
    if not isinstance(text, str):
        raise InputError(f"text must be a string or a list of strings, got {type(text).__name__}.")
    if "\x00" in text:
        raise InputError("input contains NUL bytes, so it looks binary; pass UTF-8 text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"input is not valid UTF-8 (unpaired surrogate at character "
                         f"{exc.start}); convert it to UTF-8 text first.") from None
    if not text.strip():
        raise InputError("input text is empty or only whitespace; there is nothing to compress.")
    return text


def _join_documents(docs: Sequence[Any]) -> tuple[str, list[int]]:
    if not docs:
        raise InputError("the list of documents is empty; there is nothing to compress.")
    parts, breaks, pos = [], [], 0
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise InputError(f"document {i} is a {type(doc).__name__}, not a string.")
        if i:
            parts.append("\n\n")
            pos += 2
        breaks.append(pos)
        parts.append(doc)
        pos += len(doc)
    return "".join(parts), breaks


def make_counter(tokenizer: Any, model: str) -> TokenCounter:
    """Budget tokenizer: the given one, or the scoring model's."""
    if tokenizer is None or isinstance(tokenizer, str):
        from ..models import load_tokenizer

        name = tokenizer or model
        return TokenCounter(load_tokenizer(name), name)
    return TokenCounter(tokenizer)


@dataclass
class Selection:
    keep: np.ndarray
    scores: np.ndarray
    forced: np.ndarray
    text: str
    spans: list[tuple[int, int]]
    tokens: int


def _fill_coarse(keep: np.ndarray, scores: np.ndarray, cost: np.ndarray,
                 capacity: float) -> np.ndarray:
    """At a coarse level, while room is left, also keep the best units that did not fit
    whole (e.g. one long sentence): the finer levels trim them to the budget, so a unit
    larger than the room is not lost entirely."""
    keep = keep.copy()
    used = float(cost[keep].sum())
    for i in np.argsort(-scores, kind="stable"):
        if used >= capacity:
            break
        if not keep[i] and cost[i] > 0:
            keep[i] = True
            used += float(cost[i])
    return keep


class LevelSelector:
    """Runs the levels for one text and fits the result to the budget exactly."""

    def __init__(self, units: Units, levels: list[str], scorers: dict[str, Scorer],
                 ctx: ScoringContext, counter: TokenCounter, forced: np.ndarray) -> None:
        self.units, self.levels, self.scorers = units, levels, scorers
        self.ctx, self.counter, self.forced = ctx, counter, forced
        self.costs = counter.word_costs(units.text, units.spans)
        self._full_scores: dict[str, np.ndarray] = {}
        self._restricted: dict[tuple[str, bytes], np.ndarray] = {}
        self._last_scores = np.zeros(0)

    def _scores(self, level: str, alive: np.ndarray, live: np.ndarray,
                reuse_full: bool) -> np.ndarray:
        """Scores of the units at ``level``. An LM scorer that did not already run on the
        full text scores only the text still alive (coarse-to-fine: words are scored
        inside the kept sentences, with those sentences as their context)."""
        scorer = self.scorers[level]
        spans = self.units.level_spans(level)
        if reuse_full or not scorer.uses_lm or alive.all():
            if level not in self._full_scores:
                raw = scorer.score(spans, level, self.ctx)
                self._full_scores[level] = np.nan_to_num(np.asarray(raw, float), nan=-1e9)
            return self._full_scores[level]
        key = (level, alive.tobytes())
        if key not in self._restricted:
            sub_text, kept = assemble(self.units.text, self.units.spans, alive)
            starts = np.array([a for a, _ in kept], dtype=np.int64)
            offsets = np.r_[0, np.cumsum([b - a for a, b in kept])][:-1]
            live_spans = spans[live]
            i = np.searchsorted(starts, live_spans[:, 0], side="right") - 1
            j = np.searchsorted(starts, live_spans[:, 1] - 1, side="right") - 1
            mapped = np.stack([offsets[i] + live_spans[:, 0] - starts[i],
                               offsets[j] + live_spans[:, 1] - starts[j]], axis=1)
            raw = scorer.score(mapped, level, replace(self.ctx, text=sub_text, cache={}))
            out = np.full(len(spans), -1e9)
            out[live] = np.nan_to_num(np.asarray(raw, float), nan=-1e9)
            self._restricted[key] = out
        return self._restricted[key]

    def run(self, target: int) -> Selection:
        alive = np.ones(len(self.units.spans), dtype=bool)
        used_on_full: list[Scorer] = []
        for k, level in enumerate(self.levels):
            last = k == len(self.levels) - 1
            unit_of = self.units.unit_of(level)
            cost = np.bincount(unit_of, weights=self.costs * alive)
            live = np.bincount(unit_of, weights=alive.astype(float)) > 0
            forced = np.bincount(unit_of, weights=(self.forced & alive).astype(float)) > 0
            capacity = target if last else COARSE_SLACK[level] * target
            if not last and cost.sum() <= capacity:
                continue
            reuse = any(self.scorers[level] is s for s in used_on_full)
            level_scores = self._scores(level, alive, live, reuse)
            if alive.all():
                used_on_full.append(self.scorers[level])
            scores = np.where(live, level_scores, -np.inf)
            # forced units may overflow here: the exact forced-only count was checked before,
            # and a coarse unit holding protected text is trimmed by the finer levels
            keep = select_under_budget(np.where(live, scores, -1e18), np.where(live, cost, 0),
                                       capacity, forced, allow_forced_overflow=True)
            if not last:
                keep = _fill_coarse(keep, scores, np.where(live, cost, 0), capacity)
            alive &= keep[unit_of]
        self._last_scores = level_scores
        return self._fit(alive, target)

    def fine_scores(self) -> np.ndarray:
        level = self.levels[-1]
        return self._last_scores[self.units.unit_of(level)]

    def _fit(self, alive: np.ndarray, target: int) -> Selection:
        """Drop the lowest-scoring last-level units until the exact count fits."""
        level = self.levels[-1]
        unit_of = self.units.unit_of(level)
        unit_scores = self._last_scores
        unit_cost = np.bincount(unit_of, weights=self.costs, minlength=len(unit_scores))
        unit_forced = np.bincount(unit_of, weights=self.forced.astype(float),
                                  minlength=len(unit_scores)) > 0
        while True:
            out, spans = assemble(self.units.text, self.units.spans, alive)
            n = self.counter.count(out)
            unit_alive = np.bincount(unit_of, weights=alive.astype(float),
                                     minlength=len(unit_scores)) > 0
            droppable = np.flatnonzero(unit_alive & ~unit_forced)
            if n <= target or len(droppable) == 0:
                return Selection(alive, self.fine_scores(), self.forced, out, spans, n)
            order = droppable[np.argsort(unit_scores[droppable], kind="stable")]
            removed = np.cumsum(unit_cost[order])
            cut = int(np.searchsorted(removed, n - target)) + 1
            gone = np.zeros(len(unit_scores), dtype=bool)
            gone[order[:cut]] = True
            alive &= ~gone[unit_of]


def _forced_only_tokens(units: Units, forced: np.ndarray, counter: TokenCounter) -> int:
    out, _ = assemble(units.text, units.spans, forced)
    return counter.count(out)


def prepare_units(text: str, breaks: list[int] | None, fmt: str, granularity: str,
                  scorers: dict[str, Scorer], counter: TokenCounter, model: str,
                  patterns, literals, spans, keep_numbers,
                  finest: str = "word") -> tuple[Units, list[str], np.ndarray]:
    seg = segment(text, document_breaks=breaks,
                  sentences="lines" if fmt == "code" else "punctuation")
    n_docs = int(seg.document_of.max()) + 1 if seg.n_words else 0
    levels = _levels(granularity, scorers, n_docs, "sentence" if fmt == "code" else finest)
    if "token" in levels:
        tok = counter._hf
        if tok is None or not getattr(tok, "is_fast", False):
            from ..models import load_tokenizer

            tok = load_tokenizer(model)
        units = token_units(seg, tok)
    else:
        units = word_units(seg)
    prot = protected_spans(text, patterns, literals, spans, keep_numbers)
    if fmt == "markdown":
        prot += markdown_protected(text)
    forced = words_touching(units.spans, prot)
    if fmt == "code":
        forced = ~words_touching(units.spans, code_droppable_lines(text))
    return units, levels, forced


def compress(
    text: str | Sequence[str] | bytes,
    *,
    ratio: float | None = None,
    target_tokens: int | None = None,
    question: str | None = None,
    method: str = "default",
    granularity: str = "auto",
    protect: Sequence[str] = (),
    keep: Sequence[str] = (),
    keep_spans: Sequence[tuple[int, int]] = (),
    keep_numbers: bool = False,
    format: str = "text",
    tokenizer: Any = None,
    model: str = "default",
    encoder: str = "default",
    seed: int = 0,
    allow_over_budget: bool = False,
    progress: bool | None = None,
    window: int = 1024,
    dtype: str = "auto",
) -> CompressionResult:
    """Compress a prompt to at most ``ratio`` x its tokens (or ``target_tokens``).

    ``protect``: regexes whose matches are kept byte for byte; ``keep``: literal strings;
    ``keep_spans``: (start, end) character spans; ``keep_numbers``: protect all numbers.
    Tokens are counted with ``tokenizer`` (a HF tokenizer, a callable or a model name;
    default: the scoring model's). ``format``: text, markdown, json or code.
    ``allow_over_budget``: when protected text alone exceeds the budget, keep just it and
    report instead of raising :class:`BudgetError`. ``window``: LM scoring window in tokens;
    ``dtype``: the scoring model's precision ('auto' = bfloat16 where the CPU runs it fast).
    """
    t0 = time.perf_counter()
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}; choose one of: "
                         f"{', '.join(GRANULARITIES)}.")
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}.")
    if question is not None and not isinstance(question, str):
        raise UsageError("question must be a string.")
    question = question.strip() or None if question else None
    scorers = method_scorers(method, question)
    budget = Budget.from_options(ratio, target_tokens)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"seed must be a non-negative whole number, got {seed!r}.")
    if format == "code" and granularity not in ("auto", "sentence"):
        raise UsageError("format='code' drops whole comment lines only; use granularity "
                         "'auto' or 'sentence'.")
    breaks = None
    if isinstance(text, list | tuple):
        text, breaks = _join_documents(text)
    text = _check_text(text)
    counter = make_counter(tokenizer, model)
    ctx = ScoringContext(text, question, model, encoder, seed, progress, window, dtype)
    timings = {"setup": time.perf_counter() - t0}
    opts = dict(method=method, granularity=granularity, fmt=format, scorers=scorers,
                counter=counter, model=model, protect=protect, keep=keep, keep_spans=keep_spans,
                keep_numbers=keep_numbers, allow_over=allow_over_budget, timings=timings,
                finest=auto_finest(method, question, format,
                                   bool(protect or keep or keep_spans or keep_numbers)))
    if format == "json":
        from .json_format import compress_json

        result = compress_json(text, budget, ctx, **opts)
    else:
        result = _compress_text(text, breaks, budget, ctx, **opts)
    result.timings["total"] = time.perf_counter() - t0
    return result


def _compress_text(text, breaks, budget: Budget, ctx: ScoringContext, *, method, granularity,
                   fmt, scorers, counter, model, protect, keep, keep_spans, keep_numbers,
                   allow_over, timings, finest) -> CompressionResult:
    t = time.perf_counter()
    original = counter.count(text)
    target = budget.target(original)
    units, levels, forced = prepare_units(text, breaks, fmt, granularity, scorers, counter, model,
                                     protect, keep, keep_spans, keep_numbers, finest)
    timings["segment"] = time.perf_counter() - t
    notes: list[str] = []

    def result(out, spans, n, scores, kept) -> CompressionResult:
        units_out = [ScoredUnit(int(s), int(e), text[s:e], float(sc), bool(k), bool(f))
                     for (s, e), sc, k, f in zip(units.spans, scores, kept, forced, strict=True)]
        return CompressionResult(out, original, n, target, spans, units_out, method,
                                 "+".join(levels), fmt, timings, notes)

    if original <= target:
        notes.append(f"the prompt has {original} tokens, within the budget of {target}; "
                     "returned unchanged")
        return result(text, [(0, len(text))], original, np.zeros(len(units.spans)),
                      np.ones(len(units.spans), bool))
    # protected text keeps its whole unit of the finest selected level (e.g. its sentence)
    unit_of = units.unit_of(levels[-1])
    must = (np.bincount(unit_of, weights=forced.astype(float)) > 0)[unit_of]
    needed = _forced_only_tokens(units, must, counter) if must.any() else 0
    if needed > target:
        what = "code outside comments" if fmt == "code" else "protected text"
        msg = (f"{what} alone needs {needed} tokens but the budget is {target} "
               f"(over by {needed - target})")
        if not allow_over:
            raise BudgetError(msg + "; raise the budget (ratio / target tokens), protect less, "
                              "or allow going over budget (--allow-over-budget).")
        notes.append(msg + "; kept only the protected text, as asked")
        out, spans = assemble(text, units.spans, must)
        return result(out, spans, needed, np.zeros(len(units.spans)), must)
    selector = LevelSelector(units, levels, scorers, ctx, counter, forced)
    t = time.perf_counter()
    sel = selector.run(target)
    timings["score_select"] = time.perf_counter() - t
    return result(sel.text, sel.spans, sel.tokens, sel.scores, sel.keep)

