"""Reading and writing datasets: JSONL (no extra needed) and Parquet (pyarrow).

Paths are local paths or, when they contain ``://``, any filesystem URI pyarrow accepts
(``s3://``, ``gs://``, ``hdfs://``...; untested here). JSONL is read line by line so a line
that is not UTF-8 or not a JSON object becomes an error record that keeps the raw line
instead of failing the job; a UTF-8 byte-order mark before the first line is skipped.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


def pyarrow():
    """pyarrow, or a clear error naming the extra that brings it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("Parquet and filesystem URIs need pyarrow: pip install pyarrow "
                         "(or 'tokensieve[ray]', which brings it)") from None
    return pyarrow


def data_format(path: str) -> str:
    """'jsonl' or 'parquet' from the file name."""
    name = path.rstrip("/").lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise UsageError(f"{path}: cannot tell the format from the name; use a .jsonl or "
                     ".parquet file")


# ----------------------------------------------------------------------------- filesystem


class FS:
    """The few file operations the dataset code needs, on local paths or pyarrow URIs."""

    def __init__(self, path: str):
        self.remote = "://" in path and not path.startswith("file://")
        if self.remote:
            self.fs, _ = pyarrow().fs.FileSystem.from_uri(path)

    def _p(self, path: str) -> str:
        if self.remote:
            return self.fs.from_uri(path)[1] if "://" in path else path
        return path[len("file://"):] if path.startswith("file://") else path

    def exists(self, path: str) -> bool:
        if self.remote:
            return self.fs.get_file_info(self._p(path)).type.name != "NotFound"
        return os.path.exists(self._p(path))

    def isdir(self, path: str) -> bool:
        if self.remote:
            return self.fs.get_file_info(self._p(path)).type.name == "Directory"
        return os.path.isdir(self._p(path))

    def open_read(self, path: str):
        if self.remote:
            return self.fs.open_input_file(self._p(path))
        return open(self._p(path), "rb")  # noqa: SIM115

    def open_write(self, path: str):
        if self.remote:
            return self.fs.open_output_stream(self._p(path))
        return open(self._p(path), "wb")  # noqa: SIM115

    def mkdir(self, path: str) -> None:
        if self.remote:
            self.fs.create_dir(self._p(path), recursive=True)
        else:
            os.makedirs(self._p(path), exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        if self.remote:
            sel = pyarrow().fs.FileSelector(self._p(path), allow_not_found=True)
            return sorted(info.base_name for info in self.fs.get_file_info(sel))
        return sorted(os.listdir(self._p(path))) if os.path.isdir(self._p(path)) else []

    def replace(self, src: str, dst: str) -> None:
        """Atomic rename on a local filesystem (what makes a part either whole or absent)."""
        if self.remote:
            self.fs.move(self._p(src), self._p(dst))
        else:
            os.replace(self._p(src), self._p(dst))

    def remove(self, path: str) -> None:
        if self.remote:
            self.fs.delete_file(self._p(path))
        elif os.path.exists(self._p(path)):
            os.remove(self._p(path))

    def rmtree(self, path: str) -> None:
        if self.remote:
            self.fs.delete_dir(self._p(path))
        else:
            shutil.rmtree(self._p(path), ignore_errors=True)

    def size(self, path: str) -> int | None:
        if self.remote:
            return self.fs.get_file_info(self._p(path)).size
        return os.path.getsize(self._p(path))


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


# ----------------------------------------------------------------------------- reading


@dataclass
class InputRecord:
    """One input record: its position, its columns, and a read error (a line that is not
    UTF-8 or not a JSON object) as (kind, message) with the line itself in ``raw`` (bytes
    that are not UTF-8 as ``\\xNN`` escapes), so no content is lost."""

    pos: int
    row: dict[str, Any] = field(default_factory=dict)
    read_error: tuple[str, str] | None = None
    raw: str | None = None


BOM = b"\xef\xbb\xbf"


def read_records(path: str, fmt: str | None = None, batch_rows: int = 1024, digest=None,
                 ) -> Iterator[InputRecord]:
    """The records of a JSONL or Parquet file, in order; never raises on a bad line.
    ``digest`` (a hashlib object), if given, is fed every byte of the file."""
    fmt = fmt or data_format(path)
    fs = FS(path)
    if not fs.exists(path):
        raise UsageError(f"no such file: {path}")
    if fs.isdir(path):
        raise UsageError(f"{path} is a folder; pass a .jsonl or .parquet file")
    if fmt == "parquet":
        if digest is not None:
            with fs.open_read(path) as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        yield from _read_parquet(fs, path, batch_rows)
    else:
        yield from _read_jsonl(fs, path, digest)


def _raw(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")


def jsonl_lines(fs: FS, path: str, digest=None) -> Iterator[tuple[int, bytes]]:
    """(line number, the line's bytes with its end of line) of every record line of a
    JSONL file, in order: a blank line is not a record, a UTF-8 byte-order mark before the
    first line is not part of it. The n-th line yielded is the record at position n."""
    with fs.open_read(path) as raw:
        stream = io.BufferedReader(raw) if fs.remote else raw
        for lineno, line in enumerate(stream, 1):
            if digest is not None:
                digest.update(line)
            if lineno == 1 and line.startswith(BOM):
                line = line[len(BOM):]
            if line.strip():
                yield lineno, line


def _read_jsonl(fs: FS, path: str, digest=None) -> Iterator[InputRecord]:
    pos = 0
    for lineno, line in jsonl_lines(fs, path, digest):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            # keep what can be read (the id, other columns; bad bytes as U+FFFD)
            try:
                row = json.loads(line.decode("utf-8", "replace"))
            except json.JSONDecodeError:
                row = None
            yield InputRecord(pos, row if isinstance(row, dict) else {},
                              ("encoding", f"line {lineno} is not valid UTF-8 "
                               f"(byte {exc.start})"), _raw(line))
            pos += 1
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield InputRecord(pos, {}, ("json", f"line {lineno} is not JSON: {exc.msg} "
                                        f"(column {exc.colno})"), _raw(line))
            pos += 1
            continue
        if not isinstance(row, dict):
            yield InputRecord(pos, {}, ("json", f"line {lineno} is a JSON "
                                        f"{type(row).__name__}, not an object"), _raw(line))
        else:
            yield InputRecord(pos, row)
        pos += 1


def _read_parquet(fs: FS, path: str, batch_rows: int) -> Iterator[InputRecord]:
    pq = pyarrow().parquet
    pos = 0
    with fs.open_read(path) as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield InputRecord(pos, row)
                pos += 1


def parquet_schema(path: str):
    """The Arrow schema of a Parquet file (its columns keep their types in the output)."""
    pq = pyarrow().parquet
    fs = FS(path)
    with fs.open_read(path) as f:
        return pq.ParquetFile(f).schema_arrow


# ----------------------------------------------------------------------------- writing


def _json_default(value: Any) -> Any:
    """JSON for the Arrow values JSON lacks (Parquet input written as JSONL)."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to JSONL")


def jsonl_line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")


def write_jsonl(fs: FS, path: str, rows) -> None:
    with fs.open_write(path) as f:
        for row in rows:
            f.write(jsonl_line(row))


def iter_jsonl(fs: FS, path: str) -> Iterator[dict[str, Any]]:
    with fs.open_read(path) as raw:
        stream = io.BufferedReader(raw) if fs.remote else raw
        for line in stream:
            if line.strip():
                yield json.loads(line)


def arrow_table(rows: list[dict[str, Any]], schema=None):
    pa = pyarrow()
    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    return pa.Table.from_pylist(rows)


def write_parquet(fs: FS, path: str, table) -> None:
    pq = pyarrow().parquet
    with fs.open_write(path) as f:
        pq.write_table(table, f)


def read_parquet_table(fs: FS, path: str):
    pq = pyarrow().parquet
    with fs.open_read(path) as f:
        return pq.read_table(f)


def local_path(path: str) -> Path | None:
    return None if "://" in path and not path.startswith("file://") else Path(FS(path)._p(path))
