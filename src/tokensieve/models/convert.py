"""Shared by the embedded models' conversions: quiet transformers, and a GGUF model
de-quantised into a safetensors folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def save_dequantised(gguf: Path, folder: Path, tokenizer: Any = None) -> Any:
    """Load a GGUF model de-quantised to float32 and save it (and its tokenizer: the GGUF's own
    unless one is given) as safetensors into ``folder``; returns the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model
