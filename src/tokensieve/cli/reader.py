"""The one reader of a FILE|- argument: a UTF-8 text file, or standard input for ``-``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError, UsageError


def read_input(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "standard input"
    else:
        p = Path(path)
        if not p.exists():
            raise UsageError(f"no such file: {path}")
        if p.is_dir():
            raise UsageError(f"{path} is a folder; pass a text file or - for standard input.")
        data = p.read_bytes()
        name = path
    if b"\x00" in data:
        raise InputError(f"{name} contains NUL bytes, so it looks binary; pass a UTF-8 text file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 (byte {exc.start}); convert it to UTF-8, "
                         "e.g. with iconv.") from exc
