"""Sample selection by informative tokens (``tokensieve train select``): the score reads only
the informative tokens, the output is an exact subset of the input in input order with every
field kept, the choice does not depend on the batch size, bad input fails in one line. A tiny
random Llama with a word-level tokenizer built in memory; one short check on SmolLM2."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokensieve.cli import main
from tokensieve.dataset.select import select_dataset
from tokensieve.engine.budget import keep_count
from tokensieve.errors import InputError, UsageError
from tokensieve.train.select import (
    SampleScorer,
    choose,
    informative_loss,
    rank_scores,
    selective_ifd,
)

WORDS = ("the a cat dog sat ran on under mat log red blue big small what where is did who "
         "answer question paris rome capital of france italy yes no one two three").split()


@pytest.fixture(scope="module")
def tiny():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", *WORDS, "?", ".", ","])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", unk_token="[UNK]",
                                  pad_token="[PAD]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), tok


def sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


def rows(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return [{"id": f"r{i}", "prompt": sentence(rng, 3 + i % 5) + " ?",
             "response": sentence(rng, 2 + (i * 7) % 9) + " .", "n": i,
             "meta": {"tags": ["x", "é"], "w": i / 3}} for i in range(n)]


def direct_losses(model, ids):
    """Per-token cross-entropy of ids[1:] from one plain forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    return F.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="none").numpy()


# ----------------------------------------------------------------------------- pure scores


def test_selective_ifd_reads_only_the_informative_tokens():
    cond = np.array([2.0, 1.0, 3.0, 0.5, 2.5, 1.5, 4.0, 1.0, 2.0, 3.0])
    uncond = np.array([2.1, 3.0, 3.0, 0.4, 0.5, 1.5, 4.1, 1.1, 2.0, 3.2])
    s_ifd, ifd, mask = selective_ifd(cond, uncond, 0.2)
    # the two largest |delta|: tokens 1 (-2.0) and 4 (+2.0)
    assert mask.tolist() == [i in (1, 4) for i in range(10)]
    assert s_ifd == pytest.approx(np.exp((-2.0 + 2.0) / 2))
    assert ifd == pytest.approx(np.exp(np.mean(cond - uncond)))
    # the non-informative tokens change (their |delta| stays small): same S-IFD, other IFD
    c2, u2 = cond.copy(), uncond.copy()
    c2[[0, 2, 3, 5, 6, 7, 8, 9]] += np.array([5, -0.3, 1.0, 0.2, -1, 0.5, 0.1, 2])
    u2[[0, 2, 3, 5, 6, 7, 8, 9]] += np.array([5.5, 0.1, 1.2, 0.0, -1.5, 0.4, 0.3, 2.5])
    s2, ifd2, mask2 = selective_ifd(c2, u2, 0.2)
    assert mask2.tolist() == mask.tolist() and s2 == s_ifd and ifd2 != pytest.approx(ifd)
    # an informative token changes: the score moves
    c3 = cond.copy()
    c3[1] -= 1.0
    assert selective_ifd(c3, uncond, 0.2)[0] < s_ifd
    # every token informative: S-IFD is IFD
    s_all, ifd_all, _ = selective_ifd(cond, uncond, 1.0)
    assert s_all == pytest.approx(ifd_all)


def test_informative_loss_is_the_mean_of_the_hardest_share():
    loss = np.array([0.1, 5.0, 0.2, 3.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    score, mask = informative_loss(loss, 0.2)
    assert score == pytest.approx(4.0) and mask.sum() == 2
    easy = loss.copy()
    easy[[0, 2, 4, 5]] = [2.0, 0.0, 1.0, 2.9]        # still below the cut
    assert informative_loss(easy, 0.2)[0] == score


def test_unhelpful_prompts_rank_below_the_others_and_ties_go_to_the_first():
    scores = np.array([0.9, 1.2, 0.5, 0.9, np.nan, 0.7])
    ifd = np.array([0.95, 1.3, 0.6, 0.95, np.nan, 0.8])
    r = rank_scores(scores, ifd)
    assert choose(r, 0.5).tolist() == [True, False, False, True, False, True]
    # keep 4 of 6: the unhelpful one (IFD >= 1) before the unscored one
    assert choose(r, 4 / 6).tolist() == [True, False, True, True, False, True]
    assert choose(r, 5 / 6).tolist() == [True, True, True, True, False, True]


# ----------------------------------------------------------------------------- model scoring


def test_scores_match_a_plain_forward(tiny):
    model, tok = tiny
    pairs = [(r["prompt"], r["response"]) for r in rows(5)]
    sc = SampleScorer(model, tok, informative=1.0, batch_size=3)
    got = sc.score_pairs(pairs)
    sc3 = SampleScorer(model, tok, informative=0.3, batch_size=2)
    got3 = sc3.score_pairs(pairs)
    bos, nl = tok.bos_token_id, tok("\n", add_special_tokens=False)["input_ids"]
    for (p, r), g, g3 in zip(pairs, got, got3, strict=True):
        pid = tok(p + "\n", add_special_tokens=False)["input_ids"]
        rid = tok(r, add_special_tokens=False)["input_ids"]
        c = direct_losses(model, [bos, *pid, *rid])[-len(rid):]
        u = direct_losses(model, [bos, *rid])
        assert nl == [] or pid[-len(nl):] == nl
        assert g.ifd == pytest.approx(np.exp(c.mean() - u.mean()), rel=1e-4)
        assert g.score == pytest.approx(g.ifd, rel=1e-6) and g.tokens == len(rid)
        assert g3.score == pytest.approx(selective_ifd(c, u, 0.3)[0], rel=1e-4)
        assert g3.informative == keep_count(0.3, len(rid))
    texts = [r["response"] for r in rows(4)]
    for t, g in zip(texts, sc3.score_texts(texts), strict=True):
        loss = direct_losses(model, [bos, *tok(t, add_special_tokens=False)["input_ids"]])
        assert g.score == pytest.approx(informative_loss(loss, 0.3)[0], rel=1e-4)


def test_long_samples_are_cut_for_scoring_only(tiny, tmp_path):
    model, tok = tiny
    long = {"id": "long", "prompt": "what is the capital ?", "response": " ".join(WORDS * 3)}
    src = tmp_path / "in.jsonl"
    data = rows(6) + [long]
    src.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    rep = select_dataset(str(src), str(tmp_path / "out.jsonl"), 1.0, prompt_field="prompt",
                         response_field="response", model=(model, tok), max_tokens=32,
                         progress=False)
    assert rep.truncated == 1 and rep.kept == 7 and "32 tokens" in " ".join(rep.notes)
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == src.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- datasets


def write_odd_jsonl(path, data):
    """JSONL as people write it: odd spacing, escapes, CRLF, a blank line, a BOM."""
    lines = []
    for i, r in enumerate(data):
        text = json.dumps(r, ensure_ascii=i % 2 == 0, indent=None,
                          separators=(", ", ": ") if i % 3 else (",", ":"))
        lines.append(text.encode("utf-8") + (b"\r\n" if i % 4 == 1 else b"\n"))
        if i == 2:
            lines.append(b"   \n")
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))
    return [ln for ln in lines if ln.strip()]


def test_output_is_an_exact_subset_in_input_order(tiny, tmp_path):
    model, tok = tiny
    data = rows(24)
    lines = write_odd_jsonl(tmp_path / "in.jsonl", data)
    rep = select_dataset(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), 0.5,
                         prompt_field="prompt", response_field="response", model=(model, tok),
                         batch_size=4, progress=False)
    out = (tmp_path / "out.jsonl").read_bytes()
    scores = SampleScorer(model, tok).score_pairs([(r["prompt"], r["response"]) for r in data])
    want = choose(rank_scores([s.score for s in scores], [s.ifd for s in scores]), 0.5)
    assert out == b"".join(ln for ln, k in zip(lines, want, strict=True) if k)
    assert rep.records == 24 and rep.kept == 12 == keep_count(0.5, 24) and rep.dropped == 12
    kept_ids = [json.loads(x)["id"] for x in out.decode("utf-8").splitlines()]
    assert kept_ids == [r["id"] for r, k in zip(data, want, strict=True) if k]
    # the report: quantiles, and the lowest-ranked samples by id, all dropped
    assert rep.lowest[0]["id"] in {r["id"] for r in data} and len(rep.lowest) == 10
    assert not any(x["kept"] for x in rep.lowest)
    q = rep.quantiles
    assert q["all"]["0.0"] <= q["all"]["0.5"] <= q["all"]["1.0"]
    assert rep.mode == "pairs" and rep.informative == 0.3


def test_same_choice_whatever_the_batch_size_and_threads(tiny, tmp_path):
    model, tok = tiny
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows(20, seed=3)), encoding="utf-8")
    outs, reps = [], []
    threads = torch.get_num_threads()
    try:
        for b, t in ((1, 1), (3, 2), (16, 1)):
            torch.set_num_threads(t)
            dst = tmp_path / f"out{b}.jsonl"
            reps.append(select_dataset(str(src), str(dst), 0.3, field="response",
                                       model=(model, tok), batch_size=b, progress=False))
            outs.append(dst.read_bytes())
    finally:
        torch.set_num_threads(threads)
    assert outs[0] == outs[1] == outs[2] and outs[0]
    assert [x["id"] for x in reps[0].lowest] == [x["id"] for x in reps[2].lowest]
    for a, b in zip(reps[0].lowest, reps[2].lowest, strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)


def test_parquet_keeps_its_schema_and_rows(tiny, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    model, tok = tiny
    data = rows(10)
    table = pa.Table.from_pylist(data)
    pq.write_table(table, tmp_path / "in.parquet")
    rep = select_dataset(str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), 0.4,
                         prompt_field="prompt", response_field="response",
                         model=(model, tok), progress=False)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema == table.schema and out.num_rows == rep.kept == 4
    got = out.to_pylist()
    assert got == [r for r in data if r["id"] in {g["id"] for g in got}]   # whole, in order


def test_random_baseline_is_seeded_and_needs_no_model(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows(40)), encoding="utf-8")

    def run(seed, name):
        select_dataset(str(src), str(tmp_path / name), 0.25, method="random", seed=seed,
                       field="response", model=None, progress=False)
        return (tmp_path / name).read_text(encoding="utf-8")

    a, b, c = run(1, "a.jsonl"), run(1, "b.jsonl"), run(2, "c.jsonl")
    assert a == b != c and len(a.splitlines()) == 10
    lines = src.read_text(encoding="utf-8").splitlines()
    kept = a.splitlines()
    assert [lines.index(x) for x in kept] == sorted(lines.index(x) for x in kept)


def test_empty_texts_rank_last_and_are_reported(tiny, tmp_path):
    model, tok = tiny
    data = rows(6)
    data[1]["text"] = "   "
    for i, r in enumerate(data):
        r.setdefault("text", r["response"] if i != 4 else "")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    rep = select_dataset(str(src), str(tmp_path / "out.jsonl"), 4 / 6, model=(model, tok),
                         progress=False)
    assert rep.unscored == 2 and [x["pos"] for x in rep.lowest[:2]] == [4, 1]   # worst first
    kept = [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == ["r0", "r2", "r3", "r5"]


def test_bad_settings_fail_before_any_work(tiny, tmp_path):
    model, tok = tiny
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(rows(1)[0]) + "\n", encoding="utf-8")
    with pytest.raises(UsageError, match="template 'chat' needs"):
        select_dataset(str(src), str(tmp_path / "o.jsonl"), 0.5, model=(model, tok),
                       template="chat", field="response")
    with pytest.raises(UsageError, match="informative"):
        SampleScorer(model, tok, informative=0)
    with pytest.raises(UsageError, match="max_tokens"):
        SampleScorer(model, tok, max_tokens=1000)
    with pytest.raises(InputError, match="no 'text' field"):
        select_dataset(str(src), str(tmp_path / "o.jsonl"), 0.5, model=(model, tok))


@pytest.mark.parametrize("args, code, words", [
    (["--keep", "0"], 2, "keep"),
    (["--keep", "1.5"], 2, "keep"),
    (["--keep", "half"], 2, "fraction"),
    (["--field", "body"], 1, "no 'body' field"),
    (["--prompt-field", "prompt"], 2, "--response-field"),
    (["--informative", "2"], 2, "informative"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, code, words):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows(3)), encoding="utf-8")
    try:
        rc = main(["train", "select", str(src), str(tmp_path / "out.jsonl"), "--method",
                   "random", "--field", "response", "--no-progress", *args])
    except SystemExit as exc:   # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code
    assert words in err and len(err.strip().splitlines()) == 1


def test_cli_empty_input_format_mismatch_and_report(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    rc = main(["train", "select", str(empty), str(tmp_path / "o.jsonl"), "--method", "random"])
    err = capsys.readouterr().err
    assert rc == 1 and "no records" in err and len(err.strip().splitlines()) == 1
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows(8)), encoding="utf-8")
    rc = main(["train", "select", str(src), str(tmp_path / "o.parquet"), "--method", "random"])
    err = capsys.readouterr().err
    assert rc == 2 and "format" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    rc = main(["train", "select", str(bad), str(tmp_path / "o.jsonl"), "--method", "random"])
    err = capsys.readouterr().err
    assert rc == 1 and "record 2" in err and len(err.strip().splitlines()) == 1
    rc = main(["train", "select", str(src), str(tmp_path / "o.jsonl"), "--method", "random",
               "--field", "response", "--keep", "0.5", "--report", str(tmp_path / "r.json"),
               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["kept"] == 4 and out["dropped"] == 4
    assert json.loads((tmp_path / "r.json").read_text()) == out
    rc = main(["train", "select", str(src), str(tmp_path / "o.jsonl"), "--method", "random",
               "--field", "response"])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err


@pytest.mark.model
def test_smollm2_prefers_responses_that_follow_their_prompt(lm, tmp_path):
    """On the embedded SmolLM2 (chat template): a response that answers its prompt has an
    IFD below 1, the same response after an unrelated prompt ranks lower."""
    qa = [("What is the capital of France?", "The capital of France is Paris."),
          ("How many legs does a spider have?", "A spider has eight legs."),
          ("What colour is the sky on a clear day?", "The sky is blue on a clear day.")]
    swapped = [(qa[(i + 1) % 3][0], a) for i, (_, a) in enumerate(qa)]
    sc = SampleScorer(lm.model, lm.tokenizer, template="chat", informative=0.5)
    right, wrong = sc.score_pairs(qa), sc.score_pairs(swapped)
    for r, w in zip(right, wrong, strict=True):
        assert r.ifd < 1 and r.ifd < w.ifd


def test_without_bos_the_first_response_token_is_left_out_of_both(tiny):
    import copy

    model, tok = tiny
    nobos = copy.deepcopy(tok)
    nobos.bos_token = None
    assert nobos.bos_token_id is None
    p, r = "what is the capital of france ?", "paris is the capital ."
    got = SampleScorer(model, nobos, informative=1.0).score_pairs([(p, r)])[0]
    pid = nobos(p + "\n", add_special_tokens=False)["input_ids"]
    rid = nobos(r, add_special_tokens=False)["input_ids"]
    c = direct_losses(model, pid + rid)[-(len(rid) - 1):]
    u = direct_losses(model, rid)
    assert got.tokens == len(rid) - 1
    assert got.ifd == pytest.approx(np.exp(c.mean() - u.mean()), rel=1e-4)
    text = SampleScorer(model, nobos, informative=1.0).score_texts([r])[0]
    assert text.score == pytest.approx(u.mean(), rel=1e-4) and text.tokens == len(rid) - 1
