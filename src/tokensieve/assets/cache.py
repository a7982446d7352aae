"""The cache folders (``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``), installed packages
found without importing them, and the one way to fill a cache folder without ever leaving a
half-written one."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """The folder for converted models: ``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``."""
    root = os.environ.get("TOKENSIEVE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokensieve"


def downloads_dir() -> Path:
    """Where pinned package files for the models are kept: ``cache_dir()/downloads``."""
    return cache_dir() / "downloads"


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its __init__ may need
    dependencies we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def is_converted(folder: Path) -> bool:
    """Does ``folder`` hold a converted model (safetensors weights and a config)?"""
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def convert_into_cache(name: str, write: Callable[[Path], None]) -> Path:
    """``cache_dir()/name``, filled by ``write(folder)`` in a temporary folder that is then renamed
    into place, so a crash never leaves a half-written model (a concurrent winner is kept)."""
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=target.parent))
    try:
        write(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
