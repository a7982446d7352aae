"""Where the benchmarks keep their data: ``$TOKENSIEVE_DATA`` (default
``~/.cache/tokensieve/bench``), and pinned package files fetched into its ``downloads``."""

from __future__ import annotations

import os
from pathlib import Path

from ..assets.downloads import package_file as _package_file


def data_dir() -> Path:
    """The benchmarks' data folder."""
    root = os.environ.get("TOKENSIEVE_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokensieve" / "bench"


def package_file(name: str, version: str, *, folder: Path | None = None, **kwargs) -> Path:
    """:func:`tokensieve.assets.downloads.package_file`, by default into the data folder's
    ``downloads``."""
    folder = folder if folder is not None else data_dir() / "downloads"
    return _package_file(name, version, folder=folder, **kwargs)
