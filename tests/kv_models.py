"""Tiny random-initialised decoders of every architecture the KV hooks support."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=320, max_position_embeddings=1024,
              pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
              initializer_range=0.2)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),     # q/k norms, explicit head_dim
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
    "phi3": lambda: Phi3Config(**COMMON),
    "gemma3": lambda: Gemma3TextConfig(
        **COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention",
                     "full_attention"]),
}

_MODELS: dict = {}


def tiny_model(arch: str, attn: str = "sdpa"):
    """A seeded tiny model (cached per process); ``attn`` is set on every call."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation="sdpa")
        _MODELS[arch] = model.eval()
    model = _MODELS[arch]
    model.set_attn_implementation(attn)
    model.generation_config.pad_token_id = 0
    return model


def random_ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 320, (batch, n), generator=g)
