"""Shared test setup: quiet, fixed threading (2 shared cores), model fixtures."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def lm():
    """The embedded SmolLM2 (converted once into the cache by scripts/setup.sh)."""
    from tokensieve.models import load_causal_lm

    return load_causal_lm("default")


@pytest.fixture(scope="session")
def lm_tokenizer(lm):
    return lm.tokenizer


@pytest.fixture(scope="session")
def report_text():
    from pathlib import Path

    return (Path(__file__).parent.parent / "examples" / "report.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny(lm_tokenizer):
    """A tiny random Llama with the embedded model's tokenizer (one per test module)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512, bos_token_id=lm_tokenizer.bos_token_id,
                      eos_token_id=lm_tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), lm_tokenizer
