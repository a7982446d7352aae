"""The steps every text format shares (plain text, markdown, code and the string values of
JSON): the resolved options of one call, the scorers and levels, the units with their
protected ones, and the level-by-level selection under an exact token budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..engine.select import quantise, ranked, select_under_budget
from ..errors import InputError, UsageError
from ..scoring.segment import segment
from .assemble import assemble, indent_before, separators, squeezed
from .counting import TokenCounter
from .names import name_spans
from .numbers import number_spans
from .protect import protected_spans, words_touching
from .scorers import (
    SCORERS,
    EncoderRelevanceScorer,
    LearnedScorer,
    QuestionAwareScorer,
    Scorer,
    ScoringContext,
)
from .structure import code_droppable_lines, markdown_code_blocks, markdown_protected
from .units import Units, merge_units, token_units, word_units

LEVELS = ("document", "sentence", "word", "token")
# coarse levels keep this many times the target, leaving the finer level room to choose
COARSE_SLACK = {"document": 2.0, "sentence": 1.4, "word": 1.0}


@dataclass
class CompressOptions:
    """What one call of ``compress`` asked for, checked and resolved: the scorer per level,
    the budget tokenizer, protection and format. Passed whole to the text and JSON paths."""

    method: str
    granularity: str
    fmt: str
    scorers: dict[str, Scorer]
    counter: TokenCounter
    model: str = "default"
    protect: Sequence[str] = ()
    keep: Sequence[str] = ()
    keep_spans: Sequence[tuple[int, int]] = ()
    keep_numbers: bool = False
    keep_names: bool = False   # runs of capitalised words kept or dropped whole
    allow_over: bool = False
    protect_timeout: float | None = None  # seconds for the protect regexes, all together
    finest: str = "word"  # the finest level 'auto' goes down to (see auto_finest)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def protects(self) -> bool:
        """Is any text protected (kept byte for byte, charged first)? ``keep_numbers`` only
        keeps numbers whole, it protects nothing."""
        return bool(self.protect or self.keep or self.keep_spans)

    def with_changes(self, **changes: Any) -> CompressOptions:
        """A copy with some fields changed (the timings dict stays shared)."""
        return replace(self, **changes)


def method_scorers(method: str, question: str | None) -> dict[str, Scorer]:
    """The scorer for each level. 'default': with a question, encoder relevance for
    documents/sentences and question-aware surprisal for words; without one, the learned
    keep-classifier (words, names and numbers whole): on the text benchmark's dev split it
    kept more answers than LM surprisal, with a smaller answer-loss change, ~10x faster."""
    if method == "default":
        if question:
            rel, fine = EncoderRelevanceScorer(), QuestionAwareScorer()
            return {"document": rel, "sentence": rel, "word": fine, "token": fine}
        return dict.fromkeys(LEVELS, LearnedScorer())
    if not isinstance(method, str) or method not in SCORERS:
        raise UsageError(f"unknown method {method!r}; choose one of: "
                         f"{', '.join(('default', *SCORERS))}.")
    s = SCORERS[method]()
    return dict.fromkeys(LEVELS, s)


def auto_finest(method: str, question: str | None, fmt: str, protects: bool) -> str:
    """The finest level 'auto' goes down to. With a question the default stops at whole
    sentences: on the held-out dev split (benchmarks/text/tune.py) sentence selection by
    relevance lost far less gold-answer likelihood than also pruning words (-3% vs +17%
    NLL at 4x) and kept every answer. With protected text it goes down to words, so that
    a protected string does not force its whole sentence in (``keep_numbers`` protects
    nothing: it only keeps numbers whole, so it stays at sentences). Code drops whole lines.
    (A sentence that alone exceeds the budget is still cut into words: see
    :func:`_select_or_cut`.)"""
    if fmt == "code" or (method == "default" and question and not protects):
        return "sentence"
    return "word"


def levels_for(granularity: str, scorers: dict[str, Scorer], n_docs: int,
               finest: str) -> list[str]:
    own = [lv for lv in scorers["word"].auto_levels or ()
           if LEVELS.index(lv) <= LEVELS.index(finest)]
    if granularity == "auto" and own:   # the scorer's own levels, unless too fine (code)
        return own
    if granularity == "auto":
        levels = [lv for lv in ("document", "sentence", "word") if lv in
                  scorers[lv].levels and LEVELS.index(lv) <= LEVELS.index(finest)]
        if n_docs <= 1 and len(levels) > 1:
            levels = [lv for lv in levels if lv != "document"]
        return levels
    scorers[granularity].check_level(granularity)
    return [granularity]


def join_documents(docs: Sequence[Any]) -> tuple[str, list[int]]:
    """A list of documents as one text (a blank line between them) and where each starts."""
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
class Prepared:
    """The units of one text, the levels to run, which fine units are protected, and whether
    a unit of the last level too big for the budget may be cut into its fine units."""

    units: Units
    levels: list[str]
    forced: np.ndarray
    cut: bool
    whole_lines: bool = False   # code: a line comes out with its indentation or not at all
    # may the whitespace before each fine unit be squeezed (not inside protected text, nor
    # inside a line of code)
    squeezable: np.ndarray | None = None


def squeezable_gaps(text: str, spans: np.ndarray, protected: list[tuple[int, int]],
                    code: bool) -> np.ndarray:
    """For each unit, whether the whitespace before it may be squeezed: not when it lies in
    protected text, and in code only between lines (never inside one)."""
    n = len(spans)
    if n == 0:
        return np.zeros(0, dtype=bool)
    gaps = np.stack([np.r_[indent_before(text, int(spans[0, 0])), spans[:-1, 1]],
                     spans[:, 0]], axis=1)
    ok = ~words_touching(gaps, protected)
    if code:
        ok &= np.array(["\n" in text[a:b] for a, b in gaps.tolist()], dtype=bool)
    return ok


def prepare_units(text: str, breaks: list[int] | None, opts: CompressOptions) -> Prepared:
    fmt = opts.fmt
    seg = segment(text, document_breaks=breaks,
                  sentences="lines" if fmt == "code" else "punctuation")
    n_docs = int(seg.document_of.max()) + 1 if seg.n_words else 0
    levels = levels_for(opts.granularity, opts.scorers, n_docs,
                        "sentence" if fmt == "code" else opts.finest)
    if "token" in levels:
        tok = opts.counter._hf
        if tok is None or not getattr(tok, "is_fast", False):
            from ..models import load_tokenizer

            tok = load_tokenizer(opts.model)
        units = token_units(seg, tok)
    else:
        units = word_units(seg)
    whole = {kind for lv in levels for kind in opts.scorers[lv].whole}
    if opts.keep_numbers or "numbers" in whole:  # a number (+ scale word) is one unit
        units = merge_units(units, number_spans(text))
    if opts.keep_names or "names" in whole:  # a name (a run of capitalised words) is one unit
        units = merge_units(units, name_spans(text))
    prot = protected_spans(text, opts.protect, opts.keep, opts.keep_spans,
                           timeout=opts.protect_timeout)
    if fmt == "markdown":
        prot += markdown_protected(text)
        units = merge_units(units, markdown_code_blocks(text))
    forced = words_touching(units.spans, prot)
    if fmt == "code":
        forced = ~words_touching(units.spans, code_droppable_lines(text))
    # 'auto' may cut a sentence (or document) that alone exceeds the budget into words
    # rather than lose it; not code, where a partial comment line could break the syntax
    cut = (opts.granularity == "auto" and fmt != "code" and units.fine_level == "word"
           and levels[-1] != "word")
    code = fmt == "code"
    return Prepared(units, levels, forced, cut, whole_lines=code,
                    squeezable=squeezable_gaps(text, units.spans, prot, code))


def forced_only(prep: Prepared, forced: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
    """The protected units alone, the whitespace between them squeezed where it may be."""
    return assemble(prep.units.text, prep.units.spans, forced, prep.squeezable,
                    prep.whole_lines)


@dataclass
class Selection:
    keep: np.ndarray
    scores: np.ndarray
    forced: np.ndarray
    text: str
    spans: list[tuple[int, int]]
    tokens: int
    notes: list[str] = field(default_factory=list)
    cut: bool = False  # a unit of the last level was cut into its fine units
    squeeze: np.ndarray | None = None  # units whose separator was squeezed (see assemble)


def _fill_coarse(keep: np.ndarray, scores: np.ndarray, cost: np.ndarray,
                 capacity: float) -> np.ndarray:
    """At a coarse level, while room is left, also keep the best units that did not fit
    whole (e.g. one long sentence): the finer levels trim them to the budget, so a unit
    larger than the room is not lost entirely."""
    keep = keep.copy()
    used = float(cost[keep].sum())
    for i in ranked(scores):
        if used >= capacity:
            break
        if not keep[i] and cost[i] > 0:
            keep[i] = True
            used += float(cost[i])
    return keep


def _select_or_cut(scores: np.ndarray, cost: np.ndarray, live: np.ndarray, capacity: float,
                   forced: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Greedy selection as :func:`select_under_budget`, except that a unit which can never
    fit whole (it alone costs more than the budget left beside the protected text) is not
    skipped when its turn comes: it is returned to be cut, and takes the room that is left."""
    keep = forced & live
    used = float(cost[keep].sum())
    if used > capacity:
        return keep, None
    free = capacity - used
    for i in ranked(scores):
        if keep[i] or not live[i]:
            continue
        if used + cost[i] <= capacity:
            keep[i] = True
            used += float(cost[i])
        elif cost[i] > free:
            return keep, int(i)
    return keep, None


def _clean(raw) -> np.ndarray:
    """A scorer's output as every ranking below sees it and the result reports it: NaN
    lowest, rounded by the engine's :func:`quantise` (equal values rank by position)."""
    return quantise(np.nan_to_num(np.asarray(raw, float), nan=-1e9))


def drop_priority(scores: np.ndarray) -> np.ndarray:
    """Each item's place in the order of dropping: the reverse of the engine's keep order
    (lowest score first; among equal scores the later item goes first)."""
    priority = np.empty(len(scores), dtype=np.int64)
    priority[ranked(scores)[::-1]] = np.arange(len(scores))
    return priority


class LevelSelector:
    """Runs the levels for one text and fits the result to the budget exactly."""

    def __init__(self, prepared: Prepared, scorers: dict[str, Scorer], ctx: ScoringContext,
                 counter: TokenCounter) -> None:
        self.units, self.levels = prepared.units, prepared.levels
        self.forced, self.cut = prepared.forced, prepared.cut
        self.whole_lines = prepared.whole_lines
        n = len(self.units.spans)
        self.squeezable = (np.ones(n, dtype=bool) if prepared.squeezable is None
                           else prepared.squeezable)
        self.scorers, self.ctx, self.counter = scorers, ctx, counter
        self.costs = counter.word_costs(self.units.text, self.units.spans, self.whole_lines)
        self._full_scores: dict[str, np.ndarray] = {}
        self._restricted: dict[tuple[str, bytes], np.ndarray] = {}
        self._used_on_full: list[Scorer] = []

    def _scores(self, level: str, alive: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Scores of the units at ``level``. An LM scorer that did not already run on the
        full text scores only the text still alive (coarse-to-fine: words are scored
        inside the kept sentences, with those sentences as their context)."""
        scorer = self.scorers[level]
        spans = self.units.level_spans(level)
        reuse_full = any(scorer is s for s in self._used_on_full)
        if reuse_full or not scorer.uses_lm or alive.all():
            if level not in self._full_scores:
                raw = scorer.score(spans, level, self.ctx)
                self._full_scores[level] = _clean(raw)
            if alive.all():
                self._used_on_full.append(scorer)
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
            out[live] = _clean(raw)
            self._restricted[key] = out
        return self._restricted[key]

    def run(self, target: int) -> Selection:
        alive = np.ones(len(self.units.spans), dtype=bool)
        cut_unit = None
        self._used_on_full = []
        for k, level in enumerate(self.levels):
            last = k == len(self.levels) - 1
            unit_of = self.units.unit_of(level)
            cost = np.bincount(unit_of, weights=self.costs * alive)
            live = np.bincount(unit_of, weights=alive.astype(float)) > 0
            forced = np.bincount(unit_of, weights=(self.forced & alive).astype(float)) > 0
            capacity = target if last else COARSE_SLACK[level] * target
            if not last and cost.sum() <= capacity:
                continue
            level_scores = self._scores(level, alive, live)
            scores = np.where(live, level_scores, -np.inf)
            if last and self.cut:
                keep, cut_unit = _select_or_cut(scores, cost, live, capacity, forced)
            else:
                # forced units may overflow here: the exact forced-only count was checked
                # before, and a coarse unit holding protected text is trimmed by the finer
                # levels
                keep = select_under_budget(np.where(live, scores, -1e18),
                                           np.where(live, cost, 0), capacity, forced,
                                           allow_forced_overflow=True)
            if not last:
                keep = _fill_coarse(keep, scores, np.where(live, cost, 0), capacity)
            alive &= keep[unit_of]
        unit_of = self.units.unit_of(self.levels[-1])
        report = level_scores[unit_of]
        if cut_unit is None:
            return self._fit(alive, target, unit_of, drop_priority(level_scores), report)
        return self._cut(alive, target, cut_unit, level_scores, report)

    def _cut(self, alive: np.ndarray, target: int, cut_unit: int, level_scores: np.ndarray,
             report: np.ndarray) -> Selection:
        """Fill the room left beside the kept units with the best fine units (words) of
        ``cut_unit``, scored by the method's word scorer inside the kept text (or, for a
        scorer that ranks only sentences / documents, in reading order)."""
        level, fine = self.levels[-1], self.units.fine_level
        unit_of = self.units.unit_of(level)
        inside = unit_of == cut_unit
        scorer = self.scorers[fine]
        if fine in scorer.levels:
            word_scores = self._scores(fine, alive | inside, alive | inside)
        else:
            word_scores = -np.arange(len(unit_of), dtype=np.float64)
        word_scores = np.where(inside, word_scores, -1e18)
        whole = alive.copy()
        keep = select_under_budget(word_scores, np.where(inside | whole, self.costs, 0),
                                   target, whole | (self.forced & inside),
                                   allow_forced_overflow=True)
        keep &= whole | inside
        # when the exact count is over, the cut unit's words go first (worst first), then
        # whole units by their score
        cut_words = np.flatnonzero(inside)
        group_of = unit_of.copy()
        group_of[cut_words] = len(level_scores) + np.arange(len(cut_words))
        priority = np.r_[drop_priority(level_scores) + len(cut_words),
                         drop_priority(word_scores[cut_words])]
        report = report.copy()
        if fine in scorer.levels:
            report[inside] = word_scores[inside]
        sel = self._fit(keep, target, group_of, priority, report)
        s, e = self.units.level_spans(level)[cut_unit]
        sel.cut = bool((sel.keep & inside).any())
        if sel.cut:
            which = "best" if fine in scorer.levels else "first"
            sel.notes.append(
                f"a {level} of about {int(self.costs[inside].sum())} tokens (characters "
                f"{s}-{e}) is larger than the budget of {target}; kept its {which} "
                f"{fine}s ({int((sel.keep & inside).sum())} of {len(cut_words)})")
        return sel

    def _fit(self, alive: np.ndarray, target: int, group_of: np.ndarray,
             priority: np.ndarray, report: np.ndarray) -> Selection:
        """Fit the exact count to the budget: first squeeze the whitespace between the kept
        units (the separators that save the most tokens first), then drop groups of fine
        units (the last level's units) in ``priority`` order (see :func:`drop_priority`);
        if nothing is left, keep the best single unit that fits alone."""
        n_groups = len(priority)
        group_cost = np.bincount(group_of, weights=self.costs, minlength=n_groups)
        group_forced = np.bincount(group_of, weights=self.forced.astype(float),
                                   minlength=n_groups) > 0
        alive = alive.copy()
        squeeze = np.zeros(len(alive), dtype=bool)
        rounds = 0
        while True:
            out, spans = assemble(self.units.text, self.units.spans, alive, squeeze,
                                  self.whole_lines)
            n = self.counter.count(out)
            if n <= target:
                break
            more = self._squeeze_more(alive, squeeze, n - target, everything=rounds > 0)
            if more is not None:
                squeeze |= more
                rounds += 1
                continue
            group_alive = np.bincount(group_of, weights=alive.astype(float),
                                      minlength=n_groups) > 0
            droppable = np.flatnonzero(group_alive & ~group_forced)
            if len(droppable) == 0:
                break
            order = droppable[np.argsort(priority[droppable], kind="stable")]
            removed = np.cumsum(group_cost[order])
            cut = int(np.searchsorted(removed, n - target)) + 1
            gone = np.zeros(n_groups, dtype=bool)
            gone[order[:cut]] = True
            alive &= ~gone[group_of]
        if not out and target > 0:
            return self._one_unit(target, report)
        return Selection(alive, report, self.forced, out, spans, n, squeeze=squeeze)

    def _squeeze_more(self, alive: np.ndarray, squeeze: np.ndarray, excess: int,
                      everything: bool) -> np.ndarray | None:
        """Which further separators of the kept units to squeeze: those that save the most
        tokens first, until the estimated saving covers ``excess`` (or, ``everything``,
        all that save any); None when no separator left saves a token."""
        text = self.units.text
        cand, full, least = [], [], []
        for k, (i, a, b) in enumerate(separators(text, self.units.spans, alive)):
            if squeeze[i] or not self.squeezable[i]:
                continue
            rest = squeezed(text, a, b, k == 0, self.whole_lines)
            if sum(e - s for s, e in rest) < b - a:
                cand.append(i)
                full.append(text[a:b])
                least.append("".join(text[s:e] for s, e in rest))
        if not cand:
            return None
        saved = self.counter.count_many(full) - self.counter.count_many(least)
        useful = saved > 0
        if not useful.any():
            return None
        idx, saved = np.array(cand)[useful], saved[useful]
        order = np.argsort(-saved, kind="stable")
        if not everything:
            order = order[: int(np.searchsorted(np.cumsum(saved[order]), excess)) + 1]
        more = np.zeros(len(squeeze), dtype=bool)
        more[idx[order]] = True
        return more

    def _one_unit(self, target: int, report: np.ndarray) -> Selection:
        """Nothing fitted as planned (the per-unit estimates were too high, or every unit of
        the last level is over budget): keep the best-scoring single unit that fits alone,
        with its line's indentation if that still fits. Units are the fine ones when the
        last level may be cut, else the last level's."""
        empty = np.zeros(len(self.units.spans), dtype=bool)
        level = self.units.fine_level if self.cut else self.levels[-1]
        unit_of = self.units.unit_of(level)
        spans = self.units.level_spans(level)
        unit_score = np.full(len(spans), -np.inf)
        np.maximum.at(unit_score, unit_of, report)
        text = self.units.text
        order = ranked(unit_score)
        for lo in range(0, len(order), 64):
            batch = order[lo : lo + 64]
            ends = spans[batch, 1].tolist()
            plain = spans[batch, 0].tolist()
            indented = [indent_before(text, a) for a in plain]
            n_plain = self.counter.count_many([text[a:b] for a, b in zip(plain, ends,
                                                                         strict=True)])
            n_ind = self.counter.count_many([text[a:b] for a, b in zip(indented, ends,
                                                                       strict=True)])
            for k, u in enumerate(batch):
                variants = [(indented[k], n_ind[k])]
                if not self.whole_lines:
                    variants.append((plain[k], n_plain[k]))
                for a, n in variants:
                    if n <= target:
                        return Selection(unit_of == u, report, self.forced, text[a : ends[k]],
                                         [(a, ends[k])], int(n))
        return Selection(empty, report, self.forced, "", [], 0)
