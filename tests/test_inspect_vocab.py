"""inspect.vocab (under-trained tokens) and inspect.sticky (sticky encoder tokens).

The synthetic test models what training does to the rows of tokens it never sees: the
softmax gradient pushes every unseen unembedding row the same way (minus the mean hidden
state), so those rows keep their small random init plus one shared drift, while seen rows
move off in their own directions. A tiny random Llama gets exactly that, with a few
ordinary ids planted as never seen; the indicator must find them without being told which.
On the embedded SmolLM2, rows of common tokens are reset to the mean of the known-unused
rows: verification must flag exactly them afterwards and not before."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from tokensieve.cli.inspect.vocab import add_arguments, run
from tokensieve.errors import InputError, TokensieveError, UsageError
from tokensieve.inspect.sticky import SENTENCES, _Inserter, sticky
from tokensieve.inspect.vocab import (
    CATEGORIES,
    repeat_probabilities,
    token_categories,
    vocab,
)
from tokensieve.models import load_encoder, load_tokenizer

PLANTED_WORDS = [" ocean", " violin", " market"]


@pytest.fixture(scope="module")
def smol_tokenizer():
    return load_tokenizer("default")


def _planted_ids(tok) -> list[int]:
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in PLANTED_WORDS]
    assert all(len(i) == 1 for i in ids)
    return [i[0] for i in ids]


def tiny_trained_lm(tok, never_seen: list[int], seed: int = 0):
    """A 1-layer Llama over SmolLM2's vocabulary whose tied embedding looks trained except
    for the special tokens and ``never_seen``: those rows are init noise + a shared drift."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                      tie_word_embeddings=True, max_position_embeddings=128)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    n, d = cfg.vocab_size, cfg.hidden_size
    init = 0.02 * torch.randn(n, d, generator=g)
    drift = 0.3 * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    learned = torch.randn(n, d, generator=g) / d**0.5  # each seen token its own direction
    unseen = torch.zeros(n, dtype=torch.bool)
    cats, _, _ = token_categories(tok, n)
    unseen[torch.from_numpy(cats == CATEGORIES.index("special"))] = True
    unseen[never_seen] = True
    weight = init + drift + torch.where(unseen[:, None], 0.0, learned)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(weight)
    return model


def test_indicator_finds_planted_untrained_rows_of_a_tiny_model(smol_tokenizer):
    planted = _planted_ids(smol_tokenizer)
    model = tiny_trained_lm(smol_tokenizer, planted)
    result = vocab((model, smol_tokenizer), candidates=0)
    assert result.candidates == []
    cats, _, _ = token_categories(smol_tokenizer, 49152)
    from tokensieve.inspect.vocab import indicators

    ind = indicators(model, smol_tokenizer)
    normal = np.flatnonzero(cats == 0)
    top = normal[np.argsort(-ind.indicator[normal])][: len(planted)]
    assert sorted(top.tolist()) == sorted(planted)
    assert "cosine" in result.indicator
    # the same model with the planted ids seen: nothing stands out any more
    clean = indicators(tiny_trained_lm(smol_tokenizer, []), smol_tokenizer)
    assert clean.indicator[planted].max() < np.sort(ind.indicator[planted]).min() - 0.3


def test_verification_flags_rows_reset_to_the_unused_mean(lm):
    model, tok = lm.model, lm.tokenizer
    planted = _planted_ids(tok)
    before = repeat_probabilities(model, tok, planted).max(1)
    assert (before > 0.05).all(), before  # the model repeats ordinary words readily
    weight = model.get_input_embeddings().weight  # tied: the unembedding too
    assert weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    saved = weight[planted].detach().clone()
    try:
        with torch.no_grad():
            weight[planted] = weight[3:17].mean(0)  # SmolLM2's unused special tokens
        result = vocab(lm, candidates=40, threshold=0.01)
        flagged = {t.id for t in result.under_trained}
        assert set(planted) <= flagged
        ranks = {t.id: t.rank for t in result.candidates}
        assert all(ranks[i] < 20 for i in planted)
    finally:
        with torch.no_grad():
            weight[planted] = saved
    after = repeat_probabilities(model, tok, planted).max(1)
    np.testing.assert_allclose(after, before, rtol=1e-4)


def test_smollm2_known_glitch_tokens(lm):
    result = vocab(lm, candidates=12, control=12)
    pieces = [t.piece for t in result.under_trained]
    assert "ĠInstancePreprocess" in pieces and "ManagementPlaneProtection" in pieces
    assert all(t.max_prob < 0.01 for t in result.under_trained)
    assert result.control["failed"] <= 2 and result.control["median_max_prob"] > 0.05
    assert len(result.reference) >= 5 and 0 not in result.reference  # <|endoftext|> is trained
    assert result.categories["special"] == 17 and result.categories["partial"] > 200
    data = json.loads(json.dumps(result.to_dict()))
    assert data["under_trained"] == [t.id for t in result.under_trained]
    assert "ĠInstancePreprocess" in result.table()


def test_token_categories_of_wordpiece():
    tok = load_encoder("default").tokenizer
    cats, pieces, _ = token_categories(tok, len(tok))
    cat = {p: CATEGORIES[c] for p, c in zip(pieces, cats, strict=True)}
    assert cat["[CLS]"] == "special" and cat["[MASK]"] == "special"
    assert cat["[unused0]"] == "unreachable"  # the tokenizer splits the text '[unused0]'
    assert cat["##漢"] == "unreachable"  # CJK characters are split off as whole words
    assert cat["##ing"] == "normal" and cat["house"] == "normal"


def test_token_categories_of_byte_level_bpe(smol_tokenizer):
    cats, pieces, texts = token_categories(smol_tokenizer, 49152)
    got = {p: CATEGORIES[c] for p, c in zip(pieces, cats, strict=True)}
    assert got["Ġ."] == "normal"  # decoding must not clean up the space
    assert got["¡"] == "partial" and got["<|im_end|>"] == "special"


def test_no_lm_head_is_a_one_line_error():
    enc = load_encoder("default")
    with pytest.raises(InputError, match="needs a causal LM with an output") as info:
        vocab(enc)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": -1}, "candidates"),
    ({"threshold": 1.5}, "threshold"),
    ({"control": 2.5}, "control"),
    ({"reference_ids": 7}, "reference_ids"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(UsageError, match=match):
        vocab("default", **kwargs)


def test_bad_model_argument():
    with pytest.raises(UsageError, match="model must be"):
        vocab(42)


def test_cli_json(lm, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--candidates", "3", "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["candidates"]) == 3 and data["model"] == "SmolLM2-135M-Instruct"
    assert run(parser.parse_args(["--candidates", "3"])) == 0
    assert "candidates verified under-trained" in capsys.readouterr().out


# ---------------------------------------------------------------- sticky


def test_sticky_finds_tokens_stickier_than_ordinary_ones():
    result = sticky(screen=150, sample=30, validate=6, control=10,
                                  sentences=list(SENTENCES[:6]))
    worst, controls = result.worst, [t for t in result.tokens if t.control]
    assert len(worst) == 6 and len(controls) >= 8
    assert result.n_pairs == 15 and result.screened >= 150
    # inserting a token pulls unrelated sentences together; the worst ones far more
    assert result.control["median_increase"] > 0.05
    assert worst[0].increase > result.control["p90_increase"]
    assert [t.increase for t in result.tokens] == sorted((t.increase for t in result.tokens),
                                                         reverse=True)
    tok = load_encoder("default").tokenizer
    cats, _, _ = token_categories(tok, len(tok))
    assert all(CATEGORIES[cats[t.id]] == "normal" for t in result.tokens)
    assert "raises it by" in result.table()


def test_sticky_increase_is_the_mean_pairwise_change():
    enc = load_encoder("default")
    sentences = list(SENTENCES[:3])
    result = sticky(enc, screen=20, sample=0, validate=1, control=0,
                                  sentences=sentences, repeats=2)
    token = result.tokens[0]
    # independently: insert the token by text at the same word places and embed
    ins = _Inserter(enc.tokenizer, sentences, 2, 0)

    def emb(ids):
        with torch.inference_mode():
            h = enc.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        v = h.mean(0)
        return (v / v.norm()).numpy()

    plain = [emb(ins.plain(k)) for k in range(3)]
    filled = [emb(ins.filled(k, token.id)) for k in range(3)]
    assert all(ins.filled(k, token.id).count(token.id) >= 2 for k in range(3))
    changes = [filled[a] @ filled[b] - plain[a] @ plain[b] for a, b in ((0, 1), (0, 2), (1, 2))]
    assert token.increase == pytest.approx(float(np.mean(changes)), abs=1e-3)


def test_sticky_bad_input():
    with pytest.raises(InputError, match="at least two"):
        sticky(sentences=["only one"])
    with pytest.raises(UsageError, match="repeats"):
        sticky(repeats=0)
    with pytest.raises(TokensieveError):
        sticky(encoder=3.5)
