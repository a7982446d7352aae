"""inspect.attribute: leave-one-out attribution of an answer to context sentences and words."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from tokensieve.cli.inspect.attribute import add_arguments, run
from tokensieve.errors import InputError, UsageError
from tokensieve.inspect.attribute import (
    _answer_logprobs,
    _Prompt,
    _without,
    attribute,
    spearman,
)
from tokensieve.scoring.segment import segment

FILLER = [
    "The weather in the valley was mild for most of the year.",
    "Farmers grew barley and oats on the terraced slopes.",
    "A narrow road wound up the hill to the old monastery.",
    "Visitors often stopped at the bakery near the bridge.",
    "In winter the river froze and children skated on it.",
    "The library kept a collection of maps from the last century.",
]
NEEDLE = "The vault code is QX-4471."
CONTEXT = " ".join(FILLER[:3] + [NEEDLE] + FILLER[3:])
QUESTION, ANSWER = "What is the vault code?", "QX-4471"


@pytest.fixture(scope="module")
def needle(lm):
    return attribute(CONTEXT, QUESTION, ANSWER, lm, top_sentences=1, max_forwards=40)


def test_needle_sentence_ranks_first(needle):
    top = needle.top_sentences(2)
    assert top[0].text == NEEDLE
    assert top[0].loo > 5.0 and top[0].loo > 5 * max(top[1].loo, 0.5)
    assert len(needle.sentences) == 7 and all(u.loo is not None for u in needle.sentences)


def test_needle_word_ranks_first(needle):
    words = needle.top_words(3)
    assert "QX-4471" in words[0].text
    scored = [u for u in needle.words if u.loo is not None]
    assert {u.sentence for u in scored} == {3}  # only the top sentence's words
    assert len(scored) == len(NEEDLE.split())
    assert needle.forwards == 1 + 7 + len(scored) <= needle.max_forwards


def test_result_is_consistent(needle, lm):
    for u in needle.sentences + needle.words:
        assert CONTEXT[u.start : u.end] == u.text
    # the full prompt's log-likelihood, computed directly
    prompt = _Prompt(lm.tokenizer, QUESTION, ANSWER, chat=True)
    ids = prompt.ids(CONTEXT)
    x = torch.tensor([ids + prompt.answer])
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(input_ids=x).logits[0].float(), -1)
    direct = sum(float(logp[len(ids) - 1 + k, t]) for k, t in enumerate(prompt.answer))
    assert needle.answer_logprob == pytest.approx(direct, abs=1e-3)
    # one sentence's score, recomputed by hand
    without = _without(CONTEXT, segment(CONTEXT).spans("sentence"), 3)
    assert without == " ".join(FILLER)
    x = torch.tensor([prompt.ids(without) + prompt.answer])
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(input_ids=x).logits[0].float(), -1)
    n = x.shape[1] - len(prompt.answer)
    removed = sum(float(logp[n - 1 + k, t]) for k, t in enumerate(prompt.answer))
    assert needle.sentences[3].loo == pytest.approx(direct - removed, abs=2e-3)
    data = json.loads(json.dumps(needle.to_dict()))
    assert data["sentences"][3]["text"] == NEEDLE
    assert set(data["agreement"]) == {"gradnorm"}
    assert NEEDLE in needle.table()


def test_batching_and_prefix_reuse_change_nothing(lm):
    prompt = _Prompt(lm.tokenizer, QUESTION, ANSWER, chat=True)
    spans = segment(CONTEXT).spans("sentence")
    full = prompt.ids(CONTEXT)
    rows = [full] + [prompt.ids(_without(CONTEXT, spans, i)) for i in range(len(spans))]
    one = np.array([_answer_logprobs(lm.model, [r], prompt.answer, 1) for r in rows])[:, 0]
    batched = _answer_logprobs(lm.model, rows, prompt.answer, 3)
    reused = _answer_logprobs(lm.model, rows, prompt.answer, 3, reference=full)
    np.testing.assert_allclose(batched, one, atol=2e-3)
    np.testing.assert_allclose(reused, one, atol=2e-3)


def test_budget_is_respected(lm):
    r = attribute(CONTEXT, QUESTION, ANSWER, lm, max_forwards=5, top_sentences=2,
                  cheap=["attention", "gradxinput"])
    assert r.forwards <= 5
    assert sum(u.loo is not None for u in r.sentences) == 2
    assert any("exceed the budget" in n for n in r.notes)
    assert set(r.agreement) == {"attention", "gradxinput"} and r.cheap_method == "attention"
    assert all(u.cheap >= 0 for u in r.words)  # attention weights
    assert any(x < 0 for x in r.cheap_scores["gradxinput"]["words"])  # signed


def test_without_leaves_clean_text():
    text = "One two. Three four. Five."
    spans = segment(text).spans("sentence")
    assert _without(text, spans, 0) == "Three four. Five."
    assert _without(text, spans, 1) == "One two. Five."
    assert _without(text, spans, 2) == "One two. Three four."


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.parametrize("context, answer, match", [
    ("", ANSWER, "context is empty"),
    ("   \n ", ANSWER, "context is empty"),
    (CONTEXT, "", "answer is empty"),
    (CONTEXT + "\x00", ANSWER, "NUL bytes"),
    (None, ANSWER, "context must be a string"),
])
def test_bad_input(context, answer, match):
    with pytest.raises(InputError, match=match) as info:
        attribute(context, QUESTION, answer, "default")
    assert "\n" not in str(info.value)


def test_model_without_lm_head():
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tokensieve.models import default_encoder_dir

    tok = AutoTokenizer.from_pretrained(str(default_encoder_dir()))
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64))
    with pytest.raises(InputError, match="needs a causal LM with an output") as info:
        attribute(CONTEXT, QUESTION, ANSWER, (model, tok))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"cheap": "saliency"}, "unknown cheap method"),
    ({"cheap": []}, "unknown cheap method"),
    ({"max_forwards": 1}, "max_forwards"),
    ({"top_sentences": -1}, "top_sentences"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(UsageError, match=match):
        attribute(CONTEXT, QUESTION, ANSWER, "default", **kwargs)


def test_cli(lm, tmp_path, capsys):
    path = tmp_path / "ctx.txt"
    path.write_text(CONTEXT, encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(path), "-q", QUESTION, "-a", ANSWER, "--top-sentences", "0",
                              "--json"])
    assert run(args) == 0
    data = json.loads(capsys.readouterr().out)
    best = max(data["sentences"], key=lambda u: u["loo"])
    assert best["text"] == NEEDLE
    (tmp_path / "bin").write_bytes(b"a\x00b")
    with pytest.raises(InputError, match="NUL bytes"):
        run(parser.parse_args([str(tmp_path / "bin"), "-q", "q", "-a", "a"]))
    with pytest.raises(UsageError, match="no such file"):
        run(parser.parse_args([str(tmp_path / "missing"), "-q", "q", "-a", "a"]))
