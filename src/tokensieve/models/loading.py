"""A model name resolved to a folder (an embedded model, a local folder or a hub id already in
the local Hugging Face cache) and loaded with its tokenizer, cached per process, never touching
the network; and the list of what is installed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assets.cache import cache_dir
from ..errors import ModelNotFoundError
from . import gemma3, minilm, smollm2
from .convert import quiet_transformers
from .devices import resolve_device, resolve_dtype

DEFAULT_LM = "default"
DEFAULT_ENCODER = "default"


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
# keys: (kind, name) for tokenizers, (kind, name, dtype, device) for models
_loaded: dict[tuple[str, ...], LoadedModel] = {}


def resolve_lm(name: str) -> tuple[str, str]:
    """Map a user's model name to (path or id, description of the source)."""
    if name in smollm2.NAMES:
        return str(smollm2.converted_default_lm_dir()), smollm2.SOURCE
    if name in gemma3.GEMMA_NAMES:
        return str(gemma3.converted_gemma_dir()), gemma3.SOURCE
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


def load_causal_lm(name: str = DEFAULT_LM, *, device: str = "cpu",
                   dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer (cached per process and per (name, dtype, device)),
    never touching the network. ``device``: 'cpu' (default), 'cuda', 'cuda:N', 'mps' or 'auto'
    (see resolve_device); ``dtype``: 'float32' (default), 'bfloat16', 'float16' or 'auto'
    (see resolve_dtype)."""
    if name in gemma3.GEMMA_NAMES and dtype == "float16":
        from ..errors import UsageError

        raise UsageError("Gemma 3 overflows in float16 (NaN logits); use float32 or bfloat16.")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = ("lm", name, str(torch_dtype).removeprefix("torch."), device)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        where, source = resolve_lm(name)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                where, local_files_only=True, dtype=torch_dtype
            )
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        model.to(device).eval()
        loaded = LoadedModel(model, tokenizer, name, source, time.perf_counter() - start,
                             {"dtype": str(model.dtype).removeprefix("torch.")})
        _loaded[key] = loaded
        return loaded


def load_encoder(name: str = DEFAULT_ENCODER, *, device: str = "cpu",
                 dtype: str = "float32") -> LoadedModel:
    """Load a sentence encoder (a BERT-like model used with mean pooling), cached per process
    and per (name, dtype, device); ``device`` and ``dtype`` as for :func:`load_causal_lm`."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = ("encoder", name, str(torch_dtype).removeprefix("torch."), device)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        if name in minilm.NAMES:
            where, source = str(minilm.default_encoder_dir()), minilm.SOURCE
        else:
            where, source = resolve_lm(name)
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModel.from_pretrained(where, local_files_only=True, dtype=torch_dtype)
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
        for lm_key, loaded in _loaded.items():
            if lm_key[0] == "lm" and lm_key[1] == name:
                return loaded.tokenizer
        start = time.perf_counter()
        where, source = resolve_lm(name)
        from transformers import AutoTokenizer

        quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        _loaded[key] = LoadedModel(None, tokenizer, name, source, time.perf_counter() - start)
        return tokenizer


def list_models() -> list[dict[str, str]]:
    """What is installed: the embedded models and the state of the conversion cache."""
    return [smollm2.row(), gemma3.row(), minilm.row(),
            {"name": "cache", "kind": "folder", "status": "", "path": str(cache_dir())}]
