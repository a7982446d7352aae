"""format='json': compress only the string values; keys, numbers and structure stay, and
the output is valid JSON whose token count fits the budget."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ..engine.budget import Budget
from ..errors import BudgetError, InputError, UsageError
from .assemble import assemble
from .pipeline import CompressOptions, LevelSelector, join_documents, prepare_units
from .result import CompressionResult, ScoredUnit
from .scorers import ScoringContext


def _map_strings(obj: Any, fn) -> Any:
    """A copy of ``obj`` with every string value (not key) replaced by ``fn(value)``."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_strings(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    return obj


def _fill(obj: Any, pieces: list[str]) -> Any:
    """``obj`` with its non-blank string values replaced, in order, by ``pieces``."""
    it = iter(pieces)
    return _map_strings(obj, lambda v: next(it) if v.strip() else v)


def compress_json(text: str, budget: Budget, ctx: ScoringContext,
                  opts: CompressOptions) -> CompressionResult:
    counter, timings = opts.counter, opts.timings
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"input is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                         f"{exc.colno}); fix it or compress it as format='text'.") from exc
    if opts.keep_spans:
        raise UsageError("character spans cannot be protected with format='json' (the values "
                         "are re-serialised); protect them with a regex or a literal.")
    indent = 2 if "\n" in text.strip() else None

    def dump(o: Any) -> str:
        return json.dumps(o, ensure_ascii=False, indent=indent)

    original = counter.count(text)
    target = budget.target(original)
    notes: list[str] = []
    values: list[str] = []
    _map_strings(obj, lambda v: values.append(v) or v)
    # blank strings are never changed, so they belong to the skeleton
    skeleton = dump(_map_strings(obj, lambda v: "" if v.strip() else v))
    skeleton_tokens = counter.count(skeleton)

    def result(out: str, n: int, spans, units=None, scores=None, kept=None, forced=None):
        scored = []
        if units is not None:
            scored = [ScoredUnit(int(s), int(e), units.text[s:e], float(sc), bool(k), bool(f))
                      for (s, e), sc, k, f in zip(units.spans, scores, kept, forced, strict=True)]
        return CompressionResult(out, original, n, target, spans, scored, opts.method,
                                 opts.granularity, opts.fmt, timings, notes)

    nonempty = [v for v in values if v.strip()]
    if original <= target:
        notes.append("within the budget, returned unchanged")
        return result(text, original, [(0, len(text))])
    if skeleton_tokens > target:
        msg = (f"the JSON structure (keys, numbers, punctuation) alone needs {skeleton_tokens} "
               f"tokens but the budget is {target} (over by {skeleton_tokens - target})")
        if not opts.allow_over:
            raise BudgetError(msg + "; raise the budget or allow going over budget.")
        notes.append(msg + "; emptied every string, as asked")
        return result(skeleton, skeleton_tokens, [])
    if not nonempty:  # nothing to cut, but re-serialising alone fits
        notes.append("no string values to compress; re-serialised")
        return result(skeleton, skeleton_tokens, [])

    strings, breaks = join_documents(nonempty)
    sub_ctx = replace(ctx, text=strings, cache={})
    # the values are plain text; spans of the JSON text cannot be protected (checked above)
    prep = prepare_units(strings, breaks, opts.with_changes(fmt="text", keep_spans=()))
    units, forced = prep.units, prep.forced
    selector = LevelSelector(prep, opts.scorers, sub_ctx, counter)
    doc_of = units.unit_of("document")
    t = time.perf_counter()
    avail = target - skeleton_tokens
    for _ in range(16):
        sel = selector.run(max(avail, 0))
        pieces, all_spans = [], []
        squeeze = sel.squeeze if sel.squeeze is not None else np.zeros(len(sel.keep), bool)
        for d in range(len(nonempty)):
            mask = doc_of == d
            piece, spans = assemble(strings, units.spans[mask], sel.keep[mask], squeeze[mask])
            pieces.append(piece)
            all_spans += spans
        out = dump(_fill(obj, pieces))
        n = counter.count(out)
        if n <= target or not (sel.keep & ~forced).any():
            break
        # shrink from what was selected, not from the allowance, so escaping overhead
        # (\n, \u00e9 ...) is paid back in one step instead of one token per round
        avail = min(avail, sel.tokens) - (n - target)
    timings["score_select"] = time.perf_counter() - t
    if n > target:
        raise BudgetError(f"could not fit the JSON into {target} tokens (best: {n}); "
                          "raise the budget.")
    return result(out, n, all_spans, units, sel.scores, sel.keep, forced)


