"""The SFT benchmark on fake quiz files and a tiny chat model (no SmolLM2, no download): run
specs, the cached option scoring, sample selection, the pruned training passes and the report."""

from __future__ import annotations

import json

import pytest
import torch
from test_sft_data import fake_files, tiny_chat_model

from tokensieve.bench import sft_data as sd
from tokensieve.bench.sft_bench import (
    SFTConfig,
    choice_losses,
    collate,
    encode,
    main,
    merge_results,
    parse_run,
    run_bench,
    run_order,
)
from tokensieve.bench.sft_report import markdown, summary, write_report
from tokensieve.errors import UsageError


def test_run_specs():
    r = parse_run("tshirt@0.5+pdl")
    assert (r.selector, r.fraction, r.method, r.keep) == ("tshirt", 0.5, "pdl", None)
    r = parse_run("qtuning:samples=0.3@0.6")
    assert (r.selector, r.method, r.keep) == (None, "qtuning:samples=0.3", 0.6)
    r = parse_run("random-samples@0.25")
    assert (r.selector, r.fraction, r.method, r.keep) == ("random-samples", 0.25, "all", None)
    assert parse_run("eslm").keep == 0.6
    for bad, msg in (("tshirt", "fraction"), ("tshirt@1.5", "fraction"), ("tshirt@x", "fraction"),
                     ("all+pdl", "SELECTOR"), ("excess@0.5", "reference"),
                     ("eslm@two", "not a number"), ("nope", "qtuning")):
        with pytest.raises(UsageError, match=msg):
            parse_run(bad)


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model, tok = tiny_chat_model()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                         "<|im_start|>assistant\n{% endif %}")
    return model, tok, sd.build_sft(files=fake_files(), n_held_out=2, seed=3)


def test_cached_option_scoring_equals_one_forward_per_option(setup):
    model, tok, s = setup
    for ex in s.held_out[:3]:
        assert choice_losses(model, tok, ex) == pytest.approx(sd.option_losses(model, tok, ex),
                                                              rel=1e-4)


def test_collate_labels_only_the_answer(setup):
    _, tok, s = setup
    rows = [encode(tok, ex) for ex in s.train[:3]]
    b = collate(rows)
    for i, r in enumerate(rows):
        lab = b["labels"][i]
        assert (lab[:r.start] == -100).all() and (lab[len(r.ids):] == -100).all()
        assert lab[r.start:len(r.ids)].tolist() == r.ids[r.start:]
        assert tok.decode(r.ids[r.start:]) == s.train[i].answer
        assert int(b["attention_mask"][i].sum()) == len(r.ids)


def test_sample_selectors_keep_their_share_of_answer_tokens_in_one_order():
    import numpy as np

    scores = np.arange(20, dtype=float)
    ones = [1] * 20
    full = run_order(parse_run("all"), ones, 0, None)
    top = run_order(parse_run("tshirt@0.25"), ones, 0, scores)
    assert sorted(top) == list(range(15, 20))
    assert top == [i for i in full if i in set(top)]         # the seed's order, filtered
    rnd = run_order(parse_run("random-samples@0.5"), ones, 0, None)
    assert len(rnd) == 10 and rnd == run_order(parse_run("random-samples@0.5"), ones, 0, None)
    assert rnd != run_order(parse_run("random-samples@0.5"), ones, 1, None)
    assert sorted(full) == list(range(20)) and full != run_order(parse_run("all"), ones, 1, None)
    # the budget is answer tokens: long answers of high rank use it up sooner
    lengths = [1] * 16 + [10] * 4          # the four best-ranked examples have 10 tokens each
    top = run_order(parse_run("tshirt@0.5"), lengths, 0, scores)
    assert sorted(top) == [18, 19]       # 20 tokens; the third (30) would pass 28
    scores[19] = float("nan")               # nothing to score: ranked last
    assert 19 not in run_order(parse_run("tshirt@0.5"), lengths, 0, scores)


@pytest.fixture(scope="module")
def results(setup):
    model, tok, s = setup
    cfg = SFTConfig(runs=["all", "tshirt@0.5", "qtuning:samples=0.5@0.6", "random-samples@0.5+pdl"],
                    train_examples=24, held_out=12, batch=4, lr=1e-3, seeds=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = run_bench(s, model, tok, cfg, log=lambda m: None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # runs train copies
    return res


def test_runs_spend_what_they_select(results):
    runs = {(r["label"], r["seed"]): r for r in results["runs"]}
    assert len(runs) == 8
    for seed in (0, 1):
        full = runs[("all", seed)]
        assert full["examples"] == 24 and full["steps"] == 6
        assert full["answer_tokens"] == full["labelled"] and full["trained_samples"] == 24
        half = runs[("tshirt@0.5", seed)]
        assert half["answer_tokens"] <= full["answer_tokens"] / 2 and half["flops"] < full["flops"]
        assert half["steps"] == -(-half["examples"] // 4) < full["steps"]
        q = runs[("qtuning:samples=0.5@0.6", seed)]
        # every batch is scored, only the kept samples are trained (half of a batch of 4,
        # all four when no quadrant can be told apart)
        assert q["examples"] == 24 and 0 < q["trained_samples"] < 24
        assert q["answer_tokens"] < q["labelled"] == full["labelled"]
        assert q["trained_tokens"] < full["trained_tokens"]
        # its no-grad pass over every sample is a third of a training step's body FLOPs
        assert full["flops"] / 3 < q["flops"] < full["flops"]
        for r in (full, half, q):
            assert 0 <= r["held_out"]["accuracy"] <= 1 and r["held_out"]["n"] == 12
    assert results["meta"]["tshirt_scoring"]["forward_tokens"] > 0


def test_report_table_and_merge(results, tmp_path):
    rows = {r["label"]: r for r in summary(results)}
    assert rows["all"]["answer_ratio"] == 1.0 and rows["all"]["seeds"] == 2
    assert rows["tshirt@0.5"]["answer_ratio"] <= 0.5
    text = markdown(results)
    n = rows["tshirt@0.5"]["examples"]
    assert f"| tshirt@0.5 | 2 | {n:.0f} |" in text and "≤ 50% of the tokens" in text
    assert "qtuning:samples=0.5@0.6" in text and "± +" not in text   # a spread has no sign
    files = write_report(results, tmp_path)
    assert [f.name for f in files] == ["results.json", "report.md", "accuracy.png"]
    assert json.loads(files[0].read_text())["runs"] == results["runs"]
    one = {**results, "runs": [r for r in results["runs"] if r["seed"] == 0]}
    two = {**results, "runs": [r for r in results["runs"] if r["seed"] == 1]}
    assert len(merge_results(one, two)["runs"]) == 8
    other = json.loads(json.dumps(two))
    other["meta"]["config"]["lr"] = 0.5
    with pytest.raises(UsageError, match="other settings"):
        merge_results(one, other)


def test_cli_errors(capsys, tmp_path):
    assert main(["--runs", "tshirt@2"]) == 2
    assert "fraction" in capsys.readouterr().err
    assert main(["--train-examples", "3"]) == 2
    assert main(["--merge", str(tmp_path / "none.json")]) == 2
    assert "no such results file" in capsys.readouterr().err
