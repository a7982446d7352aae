"""inspect.surprise: the numbers are the LM's own per-token loss, words own their tokens,
the outputs (terminal, HTML, PNG, JSON) show them, bad input gets a one-line error; and the
`tokensieve inspect` command shell."""

import html
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tokensieve import InputError, UsageError, cli
from tokensieve import inspect as ins
from tokensieve.scoring.lm import resolve_causal_lm
from tokensieve.scoring.units import token_units, visible_starts

TEXT = "The museum opens at nine. Tickets cost twelve euros, unbelievably cheap for Lisbon."


def direct_loss(model, tokenizer, text, prefix=""):
    """Per-token cross-entropy of ``text`` from one plain forward pass (BOS + prefix + text)."""
    head = [tokenizer.bos_token_id] + tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([head + ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
    return nll[len(head) - 1 :].numpy()


# ------------------------------------------------------------------ the numbers themselves


@pytest.mark.model
def test_surprisal_is_the_lms_own_per_token_loss(lm):
    r = ins.surprise(TEXT, lm, progress=False)
    want = direct_loss(lm.model, lm.tokenizer, TEXT)
    got = np.array([t.surprisal for t in r.tokens])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    # and their mean is the loss transformers computes itself
    ids = torch.tensor([[lm.tokenizer.bos_token_id]
                        + lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss.item()
    assert r.mean == pytest.approx(loss, abs=1e-4)
    assert r.total == pytest.approx(float(want.sum()), abs=1e-3)
    assert r.perplexity == pytest.approx(np.exp(loss), rel=1e-3)


def test_tiny_model_loss_and_token_text(tiny):
    model, tok = tiny
    r = ins.surprise(TEXT, tiny, progress=False)
    np.testing.assert_allclose([t.surprisal for t in r.tokens], direct_loss(model, tok, TEXT),
                               atol=1e-4)
    assert "".join(t.text for t in r.tokens) == TEXT
    assert all(TEXT[t.start:t.end] == t.text for t in r.tokens)


def test_windows_carry_context_and_first_window_is_exact(tiny):
    model, tok = tiny
    text = " ".join(f"item {i} is {'red' if i % 3 else 'blue'}." for i in range(40))
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n > 200
    r = ins.surprise(text, tiny, window=64, overlap=16, progress=False)
    got = np.array([t.surprisal for t in r.tokens])
    assert len(got) == n and np.isfinite(got).all()
    full = direct_loss(model, tok, text)
    # tokens inside the first window see exactly the same context as a full forward
    np.testing.assert_allclose(got[:60], full[:60], atol=1e-4)


@pytest.mark.model
def test_question_reduction_is_neutral_minus_conditioned(lm):
    from tokensieve.scoring.surprisal import NEUTRAL_QUESTION

    q = "How much do tickets cost?"
    r = ins.surprise(TEXT, lm, question=q, progress=False)
    cond = direct_loss(lm.model, lm.tokenizer, TEXT, f"Question: {q}\n\n")
    neutral = direct_loss(lm.model, lm.tokenizer, TEXT, f"Question: {NEUTRAL_QUESTION}\n\n")
    owner = np.array([t.word for t in r.tokens])
    for k, w in enumerate(r.words):
        mine = owner == k
        assert w.conditioned == pytest.approx(float(cond[mine].sum()), abs=1e-3)
        assert w.reduction == pytest.approx(float((neutral - cond)[mine].sum()), abs=1e-3)
    assert r.total_conditioned == pytest.approx(float(cond.sum()), abs=1e-3)
    by_text = {w.text: w for w in r.words}
    # the question names tickets and asks for a price: those words become expected
    assert by_text["Tickets"].reduction > 0
    assert r.top_words(3, by="reduction")[0].reduction > 1.0


# ------------------------------------------------------------------------- words own tokens


def test_a_word_owns_the_token_that_carries_its_leading_space():
    text = "Hello world, naive unbelievable\nnext"
    # byte-level BPE offsets: ' unbelie' starts at the space before the word
    offsets = np.array([(0, 5), (5, 11), (11, 12), (12, 18), (18, 26), (26, 31), (31, 32),
                        (32, 36)])
    spans = np.array([(0, 5), (6, 12), (13, 18), (19, 31), (32, 36)])
    starts = visible_starts(text, offsets)
    assert starts.tolist() == [0, 6, 11, 13, 19, 26, 31, 32]
    # 'world,' owns ' world' and ','; 'unbelievable' owns both of its tokens; '\n' no word
    assert token_units(starts, spans).tolist() == [0, 1, 1, 2, 3, 3, -1, 4]


@pytest.mark.model
def test_word_surprisal_sums_all_its_tokens(lm):
    r = ins.surprise(TEXT, lm, progress=False)
    word = next(w for w in r.words if w.text == "unbelievably")
    toks = [t for t in r.tokens if t.word == r.words.index(word)]
    assert len(toks) == word.tokens >= 2  # ' unbelie' + 'vably' (or similar): both counted
    assert word.surprisal == pytest.approx(sum(t.surprisal for t in toks))
    assert sum(w.surprisal for w in r.words) == pytest.approx(
        r.total - sum(t.surprisal for t in r.tokens if t.word < 0))
    assert [w.text for w in r.words] == TEXT.split()


# ------------------------------------------------------------------------------- outputs


def test_outputs_html_png_json_terminal(tiny, tmp_path):
    text = 'A <b>bold</b> & "quoted" claim: 你好, café.\nSecond line.'
    r = ins.surprise(text, tiny, question="What claim?", progress=False)
    page = r.to_html(tmp_path / "s.html")
    assert (tmp_path / "s.html").read_text(encoding="utf-8") == page
    assert "<script" not in page and "http" not in page  # self-contained
    # the heat map is the text itself, escaped, cut into hoverable spans
    body = re.search(r'<div class="text">(.*?)</div>', page, flags=re.S).group(1)
    assert html.unescape(re.sub(r"<span [^>]*>|</span>", "", body)) == text
    assert "<b>" not in body
    assert page.count("data-tip=") >= len({(t.start, t.end) for t in r.tokens if t.text.strip()})
    assert "question lowers" in page
    png = r.to_png(tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(r.to_json())
    assert data["tokens"][0].keys() >= {"text", "start", "end", "surprisal"}
    assert data["words"][0]["reduction"] is not None and data["unit"] == "nats"
    shown = r.rich()
    assert shown.plain.startswith(text)  # the terminal view shows the text itself, coloured
    assert {str(s.style).split(" on ")[1] for s in shown.spans if " on " in str(s.style)}
    with pytest.raises(UsageError, match="folder"):
        r.to_png(tmp_path)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad, match", [("", "empty"), ("  \n\t", "empty"),
                                        (b"\x00\x01binary", "binary"),
                                        (b"\xff\xfe caf\xe9", "UTF-8"),
                                        ("abc \ud800 def", "not valid UTF-8.*surrogate"),
                                        ("abc\x00def", "NUL bytes")])
def test_bad_text_gets_one_line_error(tiny, bad, match):
    with pytest.raises(InputError, match=match) as exc:
        ins.surprise(bad, tiny)
    assert "\n" not in str(exc.value)


def test_model_without_lm_head_is_refused(tmp_path, lm_tokenizer):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(UsageError, match="no causal language-model head") as exc:
        ins.surprise("hello there", str(tmp_path / "bert"))
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="no language-model head"):
        resolve_causal_lm((BertModel(cfg), lm_tokenizer))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="config.json"):
        ins.surprise("hello", str(tmp_path / "empty"))


def test_cli_errors_are_one_line(tmp_path, capsys, tiny):
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01\x02")
    empty = tmp_path / "e.txt"
    empty.write_text("   \n")
    assert cli.main(["inspect", "surprise", str(binary)]) == 1
    err = capsys.readouterr().err
    assert "binary" in err and err.count("\n") == 1
    assert cli.main(["inspect", "surprise", str(empty)]) == 1
    assert "empty" in capsys.readouterr().err
    assert cli.main(["inspect", "surprise", str(tmp_path / "missing.txt")]) == 2
    assert cli.main(["inspect", "surprise", str(empty), "--view", "reduction"]) == 2


# ---------------------------------------------------------------------------------- CLI


@pytest.mark.model
def test_cli_json_html_png(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    html, png = tmp_path / "o.html", tmp_path / "o.png"
    code = cli.main(["inspect", "surprise", str(src), "--json", "--html", str(html),
                     "--png", str(png), "--question", "What do tickets cost?"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["text"] == TEXT and data["question"] == "What do tickets cost?"
    assert len(data["tokens"]) > 10 and html.stat().st_size > 1000
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.model
def test_cli_json_through_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tokensieve", "inspect", "surprise", "-",
                           "--json"], input=TEXT.encode(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["model"] == "SmolLM2-135M-Instruct"
    assert [w["text"] for w in data["words"]] == TEXT.split()


def test_inspect_shell_lists_every_inspector_and_explains_missing_ones(monkeypatch, capsys):
    from tokensieve.cli import inspect as icli

    monkeypatch.setattr(icli, "INSPECTORS", (*icli.INSPECTORS, "nosuchinspector"))
    parser = cli.build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command")
    inspect_parser = sub.choices["inspect"]
    names = next(a for a in inspect_parser._subparsers._group_actions).choices
    assert {"surprise", "events", "vocab", "attribute", "nosuchinspector"} <= set(names)
    args = parser.parse_args(["inspect", "nosuchinspector", "--anything", "x"])
    with pytest.raises(UsageError, match="not part of this version"):
        args.func(args)
    # the package still hands out the functions, not the submodules the CLI imported
    import importlib

    assert importlib.import_module("tokensieve.inspect.events").__name__.endswith(".events")
    assert callable(ins.surprise) and callable(ins.events)
    assert ins.events.__name__ == "events" and ins.surprise.__module__.endswith(".surprise")
