"""Resumable output: finished records go to part files in ``OUT.parts/`` next to OUT; a
restart with the same OUT skips the ids already there; the final merge writes OUT with each
record exactly once, in input order, then removes the parts.

Crash safety: every part (and the manifest, and OUT itself) is written under a temporary
name and renamed, so a part is either whole or absent; temporary leftovers of a killed run
are removed on restart. The manifest holds the settings and a fingerprint of the input (a
hash of its bytes): a restart on a changed input is refused, never merged with parts of the
old one. A part's name holds its first and last input position and a sequence number (so
two parts never share a name); the merge streams the parts in order of first position,
opening a part only when the merge reaches it, so memory does not grow with the corpus.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import TokensieveError, UsageError
from . import io as dio
from .keyset import KeySet

POS, KEY = "_tokensieve_pos", "_tokensieve_key"
HIDDEN = (POS, KEY)
MANIFEST = "manifest.json"
_PART = re.compile(r"^part-(\d{12})-(\d{12})-(\d{6,})\.(jsonl|parquet)$")
FINGERPRINT = "input_sha256"


@dataclass
class MergeStats:
    records_out: int = 0
    statuses: Counter = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    notes: list[str] = field(default_factory=list)


def _span(name: str) -> tuple[int, int, int]:
    """(first position, last position, sequence number) of a part's name."""
    first, last, seq, _ = _PART.match(name).groups()
    return int(first), int(last), int(seq)


class Checkpoint:
    """The ``OUT.parts/`` folder of one output: manifest, parts, finished keys."""

    def __init__(self, output: str, manifest: dict[str, Any], *, part_format: str,
                 overwrite: bool = False):
        self.output = output
        self.dir = output.rstrip("/") + ".parts"
        self.fs = dio.FS(output)
        self.manifest = manifest
        self.part_format = part_format
        self.overwrite = overwrite
        self.done = KeySet()
        self._seq = 0

    # ------------------------------------------------------------------ open / resume
    def open(self) -> int:
        """Create or resume the parts folder; returns how many records are already done."""
        fs = self.fs
        if fs.exists(self.dir):
            old = self._read_manifest()
            if old != self.manifest:
                if not self.overwrite and old.get(FINGERPRINT) and \
                        old.get(FINGERPRINT) != self.manifest.get(FINGERPRINT):
                    raise UsageError(
                        f"the input changed since the run interrupted in {self.dir} (its "
                        "fingerprint differs), so its finished parts no longer match the "
                        "records; resume with the same input, or pass overwrite (--overwrite) "
                        "to start again")
                if not self.overwrite:
                    diff = sorted(k for k in set(old) | set(self.manifest)
                                  if old.get(k) != self.manifest.get(k))
                    raise UsageError(
                        f"{self.dir} holds an interrupted run with other settings "
                        f"({', '.join(diff)} differ); rerun with the same settings to resume, "
                        "or pass overwrite (--overwrite) to start again")
                fs.rmtree(self.dir)
        elif fs.exists(self.output) and not self.overwrite:
            raise UsageError(f"{self.output} exists and holds a finished run; pass overwrite "
                             "(--overwrite) to replace it")
        if not fs.exists(self.dir):
            fs.mkdir(self.dir)
            self._write_atomic(MANIFEST, json.dumps(self.manifest, indent=1,
                                                    sort_keys=True).encode())
        for name in fs.listdir(self.dir):  # leftovers of a run killed mid-write
            if name.startswith(".tmp-"):
                fs.remove(dio.join(self.dir, name))
        self.done.close()
        self.done = KeySet()
        names = self.parts()
        for name in names:
            self.done.update(self._part_keys(name))
        self._seq = 1 + max((_span(n)[2] for n in names), default=0)
        return len(self.done)

    def close(self) -> None:
        """Drop the set of finished keys (its temporary file)."""
        self.done.close()

    def _read_manifest(self) -> dict[str, Any]:
        path = dio.join(self.dir, MANIFEST)
        if not self.fs.exists(path):
            return {}
        with self.fs.open_read(path) as f:
            return json.loads(f.read())

    def _write_atomic(self, name: str, data: bytes) -> None:
        tmp = dio.join(self.dir, ".tmp-" + name)
        with self.fs.open_write(tmp) as f:
            f.write(data)
        self.fs.replace(tmp, dio.join(self.dir, name))

    def parts(self) -> list[str]:
        """Part file names, by first position (then last, then sequence number)."""
        return sorted((n for n in self.fs.listdir(self.dir) if _PART.match(n)), key=_span)

    def _part_keys(self, name: str) -> list[str]:
        path = dio.join(self.dir, name)
        if name.endswith(".parquet"):
            return dio.read_parquet_table(self.fs, path).column(KEY).to_pylist()
        return [row[KEY] for row in dio.iter_jsonl(self.fs, path)]

    # ------------------------------------------------------------------ write
    def write_part(self, rows: list[dict[str, Any]], schema=None) -> str:
        """Write finished rows (each with POS and KEY) as one part, atomically, under a name
        no other part has (a finished part is never replaced)."""
        rows = sorted(rows, key=lambda r: r[POS])
        self._seq += 1
        name = (f"part-{rows[0][POS]:012d}-{rows[-1][POS]:012d}-{self._seq:06d}."
                f"{self.part_format}")
        if self.fs.exists(dio.join(self.dir, name)):
            raise TokensieveError(f"{self.dir}/{name} exists already; another run may be "
                                  "writing to the same OUT (run one at a time)")
        tmp = dio.join(self.dir, ".tmp-" + name)
        if self.part_format == "parquet":
            dio.write_parquet(self.fs, tmp, dio.arrow_table(rows, schema))
        else:
            dio.write_jsonl(self.fs, tmp, rows)
        self.fs.replace(tmp, dio.join(self.dir, name))
        self.done.update(r[KEY] for r in rows)
        return name

    # ------------------------------------------------------------------ merge
    def merge(self, out_format: str, columns: dict[str, str], records_in: int,
              all_columns: list[str] | None = None, schema=None) -> MergeStats:
        """Write OUT from the parts (each record once, in input order), check that it holds
        ``records_in`` records, then remove the parts. ``columns``: role -> output column."""
        tmp = self.output.rstrip("/") + ".tmp"
        try:
            if out_format == "parquet":
                stats = self._merge_parquet(tmp, columns, all_columns, schema)
            else:
                stats = self._merge_jsonl(tmp, columns)
        except BaseException:
            self.fs.remove(tmp)
            raise
        if stats.records_out != records_in:
            self.fs.remove(tmp)
            raise TokensieveError(
                f"records in ({records_in}) != records out ({stats.records_out}); the parts "
                f"are kept in {self.dir} (please report this)")
        self.fs.replace(tmp, self.output)
        self.close()
        self.fs.rmtree(self.dir)
        return stats

    def _ordered_rows(self) -> Iterator[dict[str, Any]]:
        """Every part's rows by position, each position once (parts never share records;
        a repeat would be dropped). A k-way merge that opens a part only when the merge
        reaches its first position: parts written in input order are read one at a time."""
        pending = [(_span(n)[0], n) for n in self.parts()]  # sorted by first position
        heap: list[tuple[int, int, dict[str, Any], Iterator[dict[str, Any]]]] = []
        tie = itertools.count()  # rows of equal position never compare as dicts
        nxt = 0
        last = -1
        while heap or nxt < len(pending):
            # open every part that may hold the next row (its first position <= the heap's)
            while nxt < len(pending) and (not heap or pending[nxt][0] <= heap[0][0]):
                stream = self._iter_part(pending[nxt][1])
                nxt += 1
                for row in stream:
                    heapq.heappush(heap, (row[POS], next(tie), row, stream))
                    break
            if not heap:
                break  # only empty parts were left
            pos, _, row, stream = heapq.heappop(heap)
            for following in stream:
                heapq.heappush(heap, (following[POS], next(tie), following, stream))
                break
            if pos == last:
                continue  # the same record twice (a position is one record of the input)
            last = pos
            yield row

    def _iter_part(self, name: str) -> Iterator[dict[str, Any]]:
        path = dio.join(self.dir, name)
        if name.endswith(".parquet"):
            yield from dio.read_parquet_table(self.fs, path).to_pylist()
        else:
            yield from dio.iter_jsonl(self.fs, path)

    @staticmethod
    def _infer_table(rows: list[dict[str, Any]], names: list[str] | None, stats: MergeStats):
        """An Arrow table of JSONL records, column by column: a column whose values have
        mixed types (a number here, a string there) is written as text (JSON for non-strings)
        instead of failing the job."""
        pa = dio.pyarrow()
        names = names or list(dict.fromkeys(k for r in rows for k in r))
        arrays = {}
        for name in names:
            values = [r.get(name) for r in rows]
            try:
                arrays[name] = pa.array(values) if rows else pa.array([], pa.string())
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays[name] = pa.array([v if v is None or isinstance(v, str) else
                                         json.dumps(v, ensure_ascii=False, default=str)
                                         for v in values], pa.string())
                stats.notes.append(f"column {name!r} has values of mixed types; written as "
                                   "text (JSON for non-strings)")
        return pa.table(arrays)

    @staticmethod
    def _count(stats: MergeStats, row: dict[str, Any], columns: dict[str, str]) -> None:
        stats.records_out += 1
        status = row.get(columns["status"])
        stats.statuses[status] += 1
        if status == "ok":
            stats.tokens_in += row[columns["original_tokens"]] or 0
            if "compressed_tokens" in columns:  # task compress
                stats.tokens_out += row[columns["compressed_tokens"]] or 0

    def _merge_jsonl(self, tmp: str, columns: dict[str, str]) -> MergeStats:
        stats = MergeStats()
        with self.fs.open_write(tmp) as f:
            for row in self._ordered_rows():
                self._count(stats, row, columns)
                f.write(dio.jsonl_line({k: v for k, v in row.items() if k not in HIDDEN}))
        return stats

    def _merge_parquet(self, tmp: str, columns: dict[str, str], all_columns: list[str] | None,
                       schema) -> MergeStats:
        pa = dio.pyarrow()
        stats = MergeStats()
        out_schema = None
        if schema is not None:
            out_schema = pa.schema([f for f in schema if f.name not in HIDDEN])
        batch: list[dict[str, Any]] = []
        rows_all: list[dict[str, Any]] = []
        with self.fs.open_write(tmp) as f:
            writer = pa.parquet.ParquetWriter(f, out_schema) if out_schema is not None else None
            for row in self._ordered_rows():
                self._count(stats, row, columns)
                clean = {k: row.get(k) for k in (all_columns or row) if k not in HIDDEN}
                if writer is None:  # JSONL input: types are inferred over every record
                    rows_all.append(clean)
                    continue
                batch.append(clean)
                if len(batch) >= 4096:
                    writer.write_table(pa.Table.from_pylist(batch, schema=out_schema))
                    batch = []
            if writer is not None:
                if batch:
                    writer.write_table(pa.Table.from_pylist(batch, schema=out_schema))
                writer.close()
            else:
                pa.parquet.write_table(self._infer_table(rows_all, all_columns, stats), f)
        return stats
