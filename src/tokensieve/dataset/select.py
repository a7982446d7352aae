"""Keep the best ``keep`` fraction of a JSONL / Parquet dataset's samples, scored by their
informative tokens (:mod:`tokensieve.train.select`), and write them in input order in the
input's format: JSONL lines byte for byte, Parquet rows with their schema. ``tokensieve train
select IN OUT --keep 0.5``.

Two passes over the input: one scores every record (streaming, ``batch_size`` samples per
forward), one copies the kept records. Memory holds one score and one short id per record.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..engine.select import ranked as ranked_order
from ..errors import InputError, UsageError
from ..train.select import (
    DEFAULT_INFORMATIVE,
    SELECT_METHODS,
    SampleScore,
    SampleScorer,
    check_fraction,
    check_informative,
    choose,
    random_scores,
    rank_scores,
)
from .io import FS, data_format, jsonl_lines, pyarrow, read_records
from .records import DEFAULT_MAX_CHARS, classify

ID_CHARS = 80          # an id shown in the report is cut to this many characters
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
BATCH_FACTOR = 4       # records gathered per scorer call, in forwards


@dataclass
class SelectReport:
    """What a selection did: counts, score quantiles (all / kept / dropped samples), the
    lowest-ranked samples (position, id, score, IFD) and the settings used."""

    input: str
    output: str
    format: str
    method: str
    keep: float
    records: int
    kept: int
    dropped: int
    unscored: int = 0
    prompt_unhelpful: int = 0
    truncated: int = 0
    informative: float | None = None
    mode: str = "text"
    model: str | None = None
    quantiles: dict[str, dict[str, float]] = field(default_factory=dict)
    lowest: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        q = self.quantiles.get("all") or {}
        spread = (f"; scores min {q['0.0']:.4g} median {q['0.5']:.4g} max {q['1.0']:.4g}"
                  if q else "")
        return (f"kept {self.kept} of {self.records} records ({self.method}, keep "
                f"{self.keep:g}), dropped {self.dropped}{spread}")


def _quantiles(values: np.ndarray) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if not v.size:
        return {}
    return {str(q): float(x) for q, x in zip(QUANTILES, np.quantile(v, QUANTILES), strict=True)}


def _short_id(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    s = str(value)
    return s if len(s) <= ID_CHARS else s[:ID_CHARS - 1] + "…"


def _field_text(rec, name: str, max_chars: int, path: str) -> str | None:
    """The record's text in ``name``; ``None`` when it is empty (scored as nothing); a
    one-line error for a missing, non-text, undecodable or oversized value."""
    text, err = classify(rec.row.get(name), name, max_chars, rec.read_error)
    if err is None:
        return text
    kind, message = err
    if kind == "empty":
        return None
    where = f"{path}: record {rec.pos + 1}"
    if kind == "missing":
        fields = ", ".join(sorted(map(str, rec.row))[:12]) or "none"
        raise InputError(f"{where} has no {name!r} field (its fields: {fields}); name the "
                         "text with --field, or --prompt-field and --response-field.")
    if kind == "too_large":
        raise InputError(f"{where}: {message}; raise the limit or drop the record.")
    raise InputError(f"{where}: {message}; fix or remove the record.")


def _check_paths(input: str, output: str, overwrite: bool) -> str:
    fmt = data_format(input)
    if data_format(output) != fmt:
        raise UsageError(f"OUT must have the input's format ({fmt}): {output} is "
                         f"{data_format(output)}; give it a .{fmt} name.")
    fs = FS(input)
    if not fs.exists(input):
        raise UsageError(f"no such file: {input}")
    if "://" not in input and "://" not in output and \
            os.path.abspath(input) == os.path.abspath(output):
        raise UsageError("OUT is IN; write the selection to another file.")
    if FS(output).exists(output) and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite (overwrite=True) to replace it.")
    return fmt


def _write_jsonl(input: str, tmp: str, kept: np.ndarray) -> int:
    fs_in, fs_out = FS(input), FS(tmp)
    n = written = 0
    with fs_out.open_write(tmp) as out:
        for n, (_, line) in enumerate(jsonl_lines(fs_in, input), 1):
            if n <= kept.shape[0] and kept[n - 1]:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                written += 1
    if n != kept.shape[0]:
        raise InputError(f"{input} changed while it was being read ({kept.shape[0]} records, "
                         f"then {n}); run again on a file that is not being written.")
    return written


def _write_parquet(input: str, tmp: str, kept: np.ndarray) -> int:
    pa = pyarrow()
    fs_in, fs_out = FS(input), FS(tmp)
    start = written = 0
    with fs_in.open_read(input) as f, fs_out.open_write(tmp) as out:
        pf = pa.parquet.ParquetFile(f)
        with pa.parquet.ParquetWriter(out, pf.schema_arrow) as writer:
            for batch in pf.iter_batches(batch_size=4096):
                mask = kept[start:start + batch.num_rows]
                start += batch.num_rows
                if mask.any():
                    writer.write_batch(batch.filter(pa.array(mask)))
                    written += int(mask.sum())
    if start != kept.shape[0]:
        raise InputError(f"{input} changed while it was being read.")
    return written


def select_dataset(input: str, output: str, keep: float = 0.5, *, field: str = "text",
                   prompt_field: str | None = None, response_field: str | None = None,
                   method: str = "tshirt", model: Any = "default",
                   informative: float = DEFAULT_INFORMATIVE, template: str = "plain",
                   max_tokens: int | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                   batch_size: int = 8, seed: int = 0, id_field: str = "id", lowest: int = 10,
                   overwrite: bool = False, device: str = "cpu", dtype: str = "float32",
                   progress: bool | None = None) -> SelectReport:
    """Score every record of ``input`` and write the best ``keep`` fraction to ``output``.

    Samples: the text in ``field``, or (``prompt_field``, ``response_field``) pairs scored by
    selective IFD (see :mod:`tokensieve.train.select`). ``method``: "tshirt" (default) or
    "random" (seeded by ``seed``, no model). ``model``: 'default' (the embedded SmolLM2), a
    local folder, a LoadedModel or a (model, tokenizer) pair. ``max_tokens``: each sample
    is cut to this many tokens for scoring only (its record is written whole);
    ``max_chars``: a longer text field is refused. An empty text scores nothing and ranks
    last. ``id_field``: what names a record in the report (else its position).
    """
    started = time.perf_counter()
    keep = check_fraction(keep, "keep (the fraction of samples kept)")
    if method not in SELECT_METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(SELECT_METHODS)}.")
    informative = check_informative(informative)
    if (prompt_field is None) != (response_field is None):
        raise UsageError("give both --prompt-field and --response-field (or neither, to score "
                         "the text in --field).")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
        raise UsageError(f"max_chars must be a positive whole number, got {max_chars!r}.")
    if isinstance(lowest, bool) or not isinstance(lowest, int) or lowest < 0:
        raise UsageError(f"lowest must be a whole number >= 0, got {lowest!r}.")
    fmt = _check_paths(input, output, overwrite)
    pairs = prompt_field is not None
    scorer, label = None, None
    if method == "tshirt":
        from ..scoring.lm import resolve_causal_lm

        lm, tokenizer, label = resolve_causal_lm(model, device=device, dtype=dtype,
                                                 what="train select")
        scorer = SampleScorer(lm, tokenizer, informative=informative, template=template,
                              max_tokens=max_tokens, batch_size=batch_size)
    scores: list[SampleScore] = []
    ids: list[Any] = []
    pending: list[tuple[int, Any]] = []   # (index into scores, text or (prompt, response))

    def flush() -> None:
        if not pending or scorer is None:
            pending.clear()
            return
        items = [p for _, p in pending]
        got = scorer.score_pairs(items) if pairs else scorer.score_texts(items)
        for (i, _), s in zip(pending, got, strict=True):
            scores[i] = s
        pending.clear()

    bar = tqdm(unit="rec", desc="scoring", delay=2.0, disable=progress is False, leave=False)
    for rec in read_records(input, fmt):
        ids.append(_short_id(rec.row.get(id_field, rec.pos)) if rec.row else rec.pos)
        if pairs:
            p = _field_text(rec, prompt_field, max_chars, input)
            r = _field_text(rec, response_field, max_chars, input)
            item = None if p is None or r is None else (p, r)
        else:
            item = _field_text(rec, field, max_chars, input)
        scores.append(SampleScore(math.nan, math.nan if pairs else None, 0, 0, False))
        if item is not None:
            pending.append((len(scores) - 1, item))
        if len(pending) >= batch_size * BATCH_FACTOR:
            flush()
        bar.update(1)
    flush()
    bar.close()
    n = len(scores)
    if not n:
        raise InputError(f"{input} has no records; there is nothing to select.")
    raw = np.array([s.score for s in scores], dtype=np.float64)
    ifd = np.array([np.nan if s.ifd is None else s.ifd for s in scores], dtype=np.float64)
    ranked = random_scores(n, seed) if method == "random" else rank_scores(raw, ifd)
    kept = choose(ranked, keep)

    tmp = output + ".part" if "://" not in output else output
    try:
        written = (_write_jsonl if fmt == "jsonl" else _write_parquet)(input, tmp, kept)
    except BaseException:
        if tmp != output:
            FS(tmp).remove(tmp)
        raise
    if tmp != output:
        FS(output).replace(tmp, output)
    order = ranked_order(ranked)[::-1]    # worst first: the reverse of the keeping order
    worst = [{"pos": int(i), "id": ids[i], "score": None if math.isnan(raw[i]) else float(raw[i]),
              "ifd": None if math.isnan(ifd[i]) else float(ifd[i]), "kept": bool(kept[i])}
             for i in order[:lowest]]
    report = SelectReport(
        input=input, output=output, format=fmt, method=method, keep=keep, records=n,
        kept=written, dropped=n - written,
        unscored=int(np.isnan(raw).sum()) if method == "tshirt" else 0,
        prompt_unhelpful=int((ifd >= 1).sum()) if pairs and method == "tshirt" else 0,
        truncated=sum(s.truncated for s in scores),
        informative=informative if method == "tshirt" else None,
        mode="pairs" if pairs else "text", model=label,
        lowest=worst, seconds=round(time.perf_counter() - started, 3))
    if method == "tshirt":
        report.quantiles = {"all": _quantiles(raw), "kept": _quantiles(raw[kept]),
                            "dropped": _quantiles(raw[~kept])}
    if report.truncated:
        report.notes.append(f"{report.truncated} samples were longer than "
                            f"{scorer.max_tokens if scorer else max_tokens} tokens "
                            "and were cut for scoring only (a prompt keeps its end, a "
                            "response or text its start); their records are written whole.")
    if report.unscored:
        report.notes.append(f"{report.unscored} samples had no token to score (an empty text "
                            "or response) and ranked last.")
    if report.prompt_unhelpful:
        report.notes.append(f"{report.prompt_unhelpful} samples have IFD >= 1 (the prompt does "
                            "not help predict the response) and ranked below the others.")
    return report
