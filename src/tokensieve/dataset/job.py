"""The dataset job: scan the input, open (or resume) the checkpoint, hand the pending
records to an engine, write parts as results come back, merge, check records in == out."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError, UsageError
from . import io as dio
from .checkpoint import FINGERPRINT, HIDDEN, KEY, POS, Checkpoint
from .keyset import KeySet
from .records import (
    DEFAULT_MAX_CHARS,
    SCORE_OPTIONS,
    TASKS,
    WorkItem,
    arrow_types,
    classify,
    make_worker,
    output_columns,
)

ENGINES = ("local", "ray")
RAW_COLUMN = "raw_line"  # the line of a record that could not be read (error:json / encoding)


@dataclass
class DatasetReport:
    """What :func:`compress_dataset` did. Token counts are over the ``ok`` records of the
    whole output (resumed ones included); ``processed`` and ``seconds`` are this run's."""

    input: str
    output: str
    engine: str
    records_in: int
    records_out: int
    errors: int
    error_counts: dict[str, int] = field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    processed: int = 0
    skipped_resumed: int = 0
    seconds: float = 0.0
    columns: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    task: str = "compress"

    @property
    def records_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "records_per_second": round(self.records_per_second, 3)}

    def summary(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.error_counts.items()))
        tokens = (f"tokens {self.tokens_in} -> {self.tokens_out}" if self.task == "compress"
                  else f"tokens scored {self.tokens_in}")
        return (f"records in {self.records_in}, out {self.records_out} "
                f"({'OK' if self.records_in == self.records_out else 'MISMATCH'}); "
                f"errors {self.errors}{f' ({errs})' if errs else ''}; {tokens}; "
                f"{self.processed} processed in {self.seconds:.1f}s "
                f"({self.records_per_second:.2f} records/s), "
                f"{self.skipped_resumed} already done")


@dataclass
class _Scan:
    records: int = 0
    columns: list[str] = field(default_factory=list)
    has_text_field: bool = False
    unreadable: int = 0  # records whose raw line is kept (not UTF-8, or not a JSON object)
    fingerprint: str = ""  # sha256 of the input's bytes


def _key(rec: dio.InputRecord, id_field: str | None) -> str:
    """The checkpoint key: the id field's value (as JSON) or '#<position>'."""
    if id_field is not None and rec.read_error is None and rec.row.get(id_field) is not None:
        return json.dumps(rec.row[id_field], sort_keys=True, ensure_ascii=False, default=str)
    return f"#{rec.pos}"


def _scan(path: str, fmt: str, text_field: str, id_field: str | None) -> _Scan:
    """Count the records, collect the columns, fingerprint the bytes, refuse duplicate ids
    (before any work). The ids go to a set on disk: memory does not grow with the corpus."""
    scan = _Scan()
    seen_cols: dict[str, None] = {}
    digest = hashlib.sha256()
    with KeySet() as ids:
        for rec in dio.read_records(path, fmt, digest=digest):
            scan.records += 1
            scan.unreadable += rec.raw is not None
            for col in rec.row:
                seen_cols.setdefault(col, None)
            if text_field in rec.row:
                scan.has_text_field = True
            if id_field is not None:
                key = _key(rec, id_field)
                first = ids.add(key, rec.pos)
                if first is not None:
                    raise InputError(f"{path}: id {key} of {id_field!r} appears twice (records "
                                     f"{first} and {rec.pos}); ids must be unique to resume")
    scan.columns = list(seen_cols)
    scan.fingerprint = digest.hexdigest()
    return scan


def _check_score_options(options: dict[str, Any]) -> None:
    """task='score' uses only model / device: refuse a compress option that was
    set (a value other than compress's default) instead of ignoring it."""
    import inspect

    from ..text import compress

    defaults = {k: p.default for k, p in inspect.signature(compress).parameters.items()}
    unused = sorted(k for k, v in options.items() if k not in SCORE_OPTIONS and k in defaults
                    and v != defaults[k] and not (v in ((), []) and defaults[k] in ((), [])))
    unknown = sorted(k for k in options if k not in defaults)
    if unknown or unused:
        names = unknown + unused
        raise UsageError(f"task 'score' takes only {' and '.join(SCORE_OPTIONS)} of the compress "
                         f"options; {', '.join(names)} {'applies' if len(names) == 1 else 'apply'}"
                         " only to task 'compress'")


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options, sort_keys=True, default=repr))


class _Progress:
    def __init__(self, total: int, enabled: bool | None):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.saved = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rec", desc="compress", dynamic_ncols=True,
                            file=sys.stderr)

    def update(self, n: int, saved: int) -> None:
        self.saved += saved
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(f"saved {self.saved} tok", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compress_dataset(
    input: str,
    output: str,
    *,
    engine: str = "local",
    task: str = "compress",
    text_field: str = "text",
    id_field: str | None = None,
    batch_size: int = 16,
    concurrency: int | None = None,
    ray_address: str | None = None,
    ray_window: int = 20_000,
    ray_window_bytes: int = 256 << 20,
    threads: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    column_prefix: str = "",
    overwrite: bool = False,
    progress: bool | None = None,
    _on_part=None,
    **compress_options: Any,
) -> DatasetReport:
    """Compress the ``text_field`` of every record of a JSONL or Parquet file into OUT
    (JSONL or Parquet, by its name), keeping every input column and adding
    ``compressed_text``, ``original_tokens``, ``compressed_tokens``, ``status`` (``ok`` or
    ``error:<kind>``) and ``error`` (a message or null), each behind ``column_prefix``.

    ``task="score"`` scores instead of compressing (``tokensieve inspect surprise`` per
    record): it adds ``tokens``, ``surprisal_total``, ``surprisal_mean`` (nats per token),
    ``perplexity``, ``status`` and ``error``; of the compress options only ``model`` and
    ``device`` apply.

    ``engine``: 'local' (in this process) or 'ray' (Ray Data, one model per actor:
    ``concurrency`` actors of ``threads`` torch threads each, default 1; ``ray_address``
    of a cluster or None for a local Ray; at most ``ray_window`` records and about
    ``ray_window_bytes`` bytes of records are handed to Ray at a time, which bounds the
    driver's memory). ``batch_size`` records make a batch and a checkpoint part; an
    interrupted run restarted with the same OUT and the same input (checked by a hash of
    its bytes) skips the finished ids (``id_field``, default the record's position). Bad
    records get an error status, never fail the job; a line that cannot be read keeps its
    text in the ``raw_line`` column; at the end records in == records out is checked.
    ``compress_options`` go to :func:`tokensieve.compress` (keep, target_tokens, question,
    protect, ...).
    """
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose local or ray")
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose {' or '.join(TASKS)}")
    compress_options.pop("progress", None)
    if task == "score":
        _check_score_options(compress_options)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive whole number, got {batch_size!r}")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise UsageError(f"concurrency must be a positive whole number, got {concurrency!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive whole number, got {threads!r}")
    if isinstance(ray_window, bool) or not isinstance(ray_window, int) or ray_window < 1:
        raise UsageError(f"ray_window must be a positive whole number, got {ray_window!r}")
    if isinstance(ray_window_bytes, bool) or not isinstance(ray_window_bytes, int) or \
            ray_window_bytes < 1:
        raise UsageError("ray_window_bytes must be a positive whole number, got "
                         f"{ray_window_bytes!r}")
    if not isinstance(max_chars, int) or max_chars < 1:
        raise UsageError(f"max_chars must be a positive whole number, got {max_chars!r}")
    if engine == "ray":
        from .ray_engine import import_ray

        import_ray()  # a clear error naming the extra, before any work
    in_fmt, out_fmt = dio.data_format(input), dio.data_format(output)
    if out_fmt == "parquet" or in_fmt == "parquet":
        dio.pyarrow()
    in_local, out_local = dio.local_path(input), dio.local_path(output)
    if in_local is not None and out_local is not None and in_local.exists() and \
            out_local.resolve() == in_local.resolve():
        raise UsageError("OUT must differ from IN")

    scan = _scan(input, in_fmt, text_field, id_field)
    if scan.columns and not scan.has_text_field:
        raise UsageError(f"no record has a {text_field!r} field (columns: "
                         f"{', '.join(scan.columns[:12])}); choose it with text_field / "
                         "--text-field")
    cols = output_columns(column_prefix, task)
    raw_col = column_prefix + RAW_COLUMN if scan.unreadable else None
    clash = [c for c in [*cols.values(), raw_col] if c in scan.columns] + \
        [c for c in HIDDEN if c in scan.columns]
    if clash:
        raise UsageError(f"the input already has column(s) {', '.join(clash)}; give the added "
                         "columns a prefix with column_prefix / --column-prefix")

    schema = None
    part_format = "jsonl"
    if in_fmt == "parquet" and out_fmt == "parquet":
        pa = dio.pyarrow()
        in_schema = dio.parquet_schema(input)
        added = [pa.field(cols[role], getattr(pa, kind)())
                 for role, kind in arrow_types(task).items()]
        schema = pa.schema([*in_schema, *added, pa.field(POS, pa.int64()),
                            pa.field(KEY, pa.string())])
        part_format = "parquet"
    all_columns = [*scan.columns, *([raw_col] if raw_col else []), *cols.values()]

    # check the options and load the model before anything is written
    compressor = make_worker(task, compress_options)
    compressor.warm_up()

    size = None
    if in_local is not None:
        size = os.path.getsize(in_local)
    manifest = _jsonable({
        "version": 2, "task": task, "input": input, "input_bytes": size, "records": scan.records,
        FINGERPRINT: scan.fingerprint,
        "text_field": text_field, "id_field": id_field, "max_chars": max_chars,
        "column_prefix": column_prefix, "options": compress_options,
    })
    ckpt = Checkpoint(output, manifest, part_format=part_format, overwrite=overwrite)
    skipped = ckpt.open()
    pending = scan.records - skipped

    def entries() -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
        for rec in dio.read_records(input, in_fmt):
            key = _key(rec, id_field)
            if key in ckpt.done:
                continue
            text, err = classify(rec.row.get(text_field), text_field, max_chars, rec.read_error)
            item = WorkItem(rec.pos, text, *(err or (None, None)))
            row = rec.row if rec.raw is None else {**rec.row, raw_col: rec.raw}
            yield item.to_dict(), row, key

    bar = _Progress(pending, progress)
    processed = 0

    def write(batch: list[tuple[dict, dict, str]], results: list[dict[str, Any]]) -> None:
        nonlocal processed
        by_pos = {r["pos"]: r for r in results}
        rows, saved = [], 0
        for item, row, key in batch:
            res = by_pos[item["pos"]]
            out = dict(row)
            for role, col in cols.items():
                out[col] = res[role]
            out[POS], out[KEY] = item["pos"], key
            rows.append(out)
            if res["status"] == "ok" and task == "compress":
                saved += res["original_tokens"] - res["compressed_tokens"]
        if rows:
            ckpt.write_part(rows, schema)
        processed += len(rows)
        bar.update(len(rows), saved)
        if _on_part is not None:
            _on_part(processed)

    try:
        if pending:
            if engine == "local":
                from .local import run_local

                run_local(entries(), write, compressor, batch_size=batch_size, threads=threads)
            else:
                from .ray_engine import run_ray

                run_ray(entries(), write, compress_options, task=task, batch_size=batch_size,
                        concurrency=concurrency, threads=threads, address=ray_address,
                        window=ray_window, window_bytes=ray_window_bytes,
                        progress=bar.bar is not None)
        bar.close()
        stats = ckpt.merge(out_fmt, cols, scan.records, all_columns=all_columns, schema=schema)
    finally:
        bar.close()
        ckpt.close()
    errors = {k: v for k, v in stats.statuses.items() if k != "ok"}
    return DatasetReport(
        input=input, output=output, engine=engine, records_in=scan.records,
        records_out=stats.records_out, errors=sum(errors.values()), error_counts=errors,
        tokens_in=stats.tokens_in, tokens_out=stats.tokens_out, processed=processed,
        skipped_resumed=skipped, seconds=time.perf_counter() - t0, columns=cols,
        notes=stats.notes, task=task)
