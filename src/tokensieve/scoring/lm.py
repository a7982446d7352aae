"""The one resolver from a ``model`` argument to (causal LM, tokenizer, name), with one set
of checks and one-line errors, for everything that reads an LM's token probabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError

DEFAULT_LABEL = "SmolLM2-135M-Instruct"   # what model='default' is called in results


def resolve_causal_lm(model: Any = "default", *, device: str = "cpu", dtype: str = "float32",
                      what: str = "this scorer") -> tuple[Any, Any, str]:
    """(model, tokenizer, name) from a model name or local folder (loaded offline and cached,
    see :func:`tokensieve.models.load_causal_lm`), a ``LoadedModel``, or a ``(model,
    tokenizer)`` pair. A model without a causal LM head or without a tokenizer is refused
    in one line naming ``what`` needs it."""
    if isinstance(model, str | Path):
        name = str(model)
        _check_folder_is_causal_lm(name, what)
        from ..models import load_causal_lm

        loaded = load_causal_lm(name, device=device, dtype=dtype)
        lm, tokenizer = loaded.model, loaded.tokenizer
    elif hasattr(model, "model") and hasattr(model, "tokenizer"):   # a LoadedModel
        lm, tokenizer = model.model, model.tokenizer
        name = getattr(model, "name", None) or type(lm).__name__
    elif isinstance(model, tuple | list) and len(model) == 2:
        lm, tokenizer = model
        name = getattr(getattr(lm, "config", None), "name_or_path", "") or type(lm).__name__
    else:
        raise UsageError(f"model must be a model name ('default', 'gemma3-270m'), a local "
                         f"folder, a LoadedModel or a (model, tokenizer) pair, got "
                         f"{type(model).__name__}.")
    head = getattr(lm, "get_output_embeddings", None)
    if head is None or getattr(head(), "weight", None) is None:
        raise UsageError(f"{what} needs a causal LM with an output (LM) head, but "
                         f"{type(lm).__name__} has no language-model head, so it gives no "
                         "token probabilities; pass a causal LM (AutoModelForCausalLM), e.g. "
                         "model='default'.")
    if tokenizer is None:
        raise UsageError(f"{what} needs the model's tokenizer; pass a (model, tokenizer) pair.")
    return lm, tokenizer, DEFAULT_LABEL if name == "default" else name


def _check_folder_is_causal_lm(name: str, what: str) -> None:
    """A local folder whose config names a model without a causal LM head (an encoder such
    as BertModel) would load with a randomly initialised head; refuse it before loading."""
    folder = Path(name).expanduser()
    config = folder / "config.json"
    if not folder.is_dir():
        return
    if not config.is_file():
        raise UsageError(f"model folder {name!r} has no config.json; pass a Hugging Face model "
                         "folder (config.json + weights) or 'default'.")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config} is not valid JSON ({exc}); fix or replace the model "
                         "folder.") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = cfg.get("architectures") or []
    if archs:
        if not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise UsageError(
                f"model folder {name!r} holds a {', '.join(archs)}, which has no causal "
                f"language-model head; {what} needs a causal LM (AutoModelForCausalLM), e.g. "
                "--model default.")
    elif cfg.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UsageError(f"model folder {name!r} (model_type {cfg.get('model_type')!r}) is not a "
                         "causal LM; pass a causal LM folder or --model default.")
