"""The training benchmark on a tiny vocabulary, tiny models and random token streams (no
SmolLM2, no corpus download): equal-FLOP stopping, one data order for every method, the
reference cache, the report and the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokensieve.bench.lm_corpus import TokenSplit, training_windows
from tokensieve.bench.train_bench import BenchConfig, parse_run, run_bench
from tokensieve.bench.train_lm import ModelSize, build_model, informative_mask, lr_at
from tokensieve.bench.train_ref import ReferenceLosses
from tokensieve.bench.train_report import COLUMNS, flops_to_reach, markdown, summary, write_report
from tokensieve.engine.budget import keep_count
from tokensieve.errors import UsageError
from tokensieve.train import ModelShape, step_flops

VOCAB, BLOCK, BATCH = 64, 16, 2


def _split(n: int, seed: int) -> TokenSplit:
    ids = np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)
    return TokenSplit(ids, np.array([0, n], np.int64), ["doc"], 0)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    torch.set_num_threads(1)
    splits = {"train": _split(3000, 1), "dev": _split(600, 2), "test": _split(600, 3)}
    reference = build_model(ModelSize(16, 1, 2, 1, 32), VOCAB, BLOCK, seed=7)
    cfg = BenchConfig(runs=["all", "random@0.3", "excess@0.5", "pdl", "qtuning@0.6"],
                      size=ModelSize(16, 1, 2, 1, 32),
                      steps=4, batch=BATCH, block_len=BLOCK, evals=2, eval_blocks=4, seeds=2)
    cache = tmp_path_factory.mktemp("ref")
    results = run_bench(splits, cfg, reference, cache_dir=cache, progress=False,
                        log=lambda s: None)
    return results, splits, reference, cache


def _runs(results, seed):
    return {r["label"]: r for r in results["runs"] if r["seed"] == seed}


def test_every_run_stops_at_the_same_flops_and_cheaper_steps_buy_more_of_them(bench):
    results, *_ = bench
    shape = ModelShape(**results["meta"]["shape"])
    budget = results["meta"]["budget_flops"]
    rows = BATCH * (BLOCK - 1)
    assert budget == 4 * step_flops(shape, BATCH, BLOCK, rows).total
    for seed in (0, 1):
        runs = _runs(results, seed)
        assert runs["all"]["steps"] == 4 and runs["all"]["flops"] == budget
        cheap = step_flops(shape, BATCH, BLOCK, keep_count(0.3, rows)).total
        assert runs["random@0.3"]["steps"] > runs["all"]["steps"]
        assert budget <= runs["random@0.3"]["flops"] < budget + cheap
        assert runs["random@0.3"]["tokens"] == runs["random@0.3"]["steps"] * keep_count(0.3, rows)
        scored = step_flops(shape, BATCH, BLOCK, keep_count(0.5, rows), rows).total
        assert budget <= runs["excess@0.5"]["flops"] < budget + scored
        assert runs["all"]["steps"] < runs["excess@0.5"]["steps"] <= runs["random@0.3"]["steps"]
        assert runs["pdl"]["steps"] == 4 and runs["pdl"]["flops"] == budget   # learns every token
        q = runs["qtuning@0.6"]                 # prunes samples and tokens: fewer kept
        assert q["tokens"] < q["labelled"] and budget <= q["flops"]
        # each step costs a no-grad pass over the batch plus a training pass over at most the
        # whole batch: at most 4/3 of a full step, so the budget lasts at least 3 steps
        assert q["steps"] >= 3 and q["flops"] < budget + 4 * step_flops(
            shape, BATCH, BLOCK, rows).total / 3 + 1


def test_every_method_reads_the_same_data_order_and_seeds_differ(bench):
    results, splits, *_ = bench
    n = splits["train"].ids.size
    orders = {}
    for seed in (0, 1):
        runs = _runs(results, seed)
        longest = max(runs.values(), key=lambda r: r["steps"])["first_windows"]
        expected = training_windows(n, BLOCK, seed, 0, BATCH * len(longest))[::BATCH].tolist()
        assert longest == expected
        for r in runs.values():
            assert r["first_windows"] == longest[:r["steps"]]
        orders[seed] = longest
    assert orders[0] != orders[1]


def test_reference_losses_are_cached_and_counted_once(bench):
    results, splits, reference, cache = bench
    files = sorted(p.name for p in cache.iterdir())
    assert [f.split("-")[0] for f in files] == ["dev", "test", "train"]
    train_file = next(cache.glob("train-*.npz"))
    again = ReferenceLosses(reference, splits["train"].ids, BLOCK, train_file)
    windows = results["runs"][0]["first_windows"][:3]
    got = again(windows)
    assert again.computed == 0                                   # read from the file
    fresh = ReferenceLosses(reference, splits["train"].ids, BLOCK)(windows)
    assert torch.allclose(got, fresh, atol=1e-2) and fresh[:, 0].eq(0).all()
    assert results["meta"]["reference_windows"] > 0
    per_window = ReferenceLosses(reference, splits["train"].ids, BLOCK)
    per_window(windows[:1])
    assert results["meta"]["reference_flops"] == \
        results["meta"]["reference_windows"] * per_window.flops()


def test_report_files_have_the_expected_columns(bench, tmp_path):
    results, *_ = bench
    files = write_report(results, tmp_path)
    assert [f.name for f in files] == ["results.json", "report.md", "curves.png"]
    assert files[2].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(files[0].read_text())["meta"]["budget_flops"] == \
        results["meta"]["budget_flops"]
    md, target_md = files[1].read_text().split("## Targets")
    assert "| " + " | ".join(COLUMNS) + " |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 5                                   # header + one per run label
    targets = [line for line in target_md.splitlines() if line.startswith("| ")][1:]
    assert [t.split(" | ")[0] for t in targets] == ["| random@0.3", "| excess@0.5", "| pdl",
                                                     "| qtuning@0.6"]
    assert all(t.endswith(("| yes |", "| no |")) for t in targets)   # 2 seeds: a spread
    full = next(line for line in rows if line.startswith("| all |"))
    assert "| 1.00 ± 0.00 | 1.000 ± 0.000 | 1.00 ± 0.00 |" in full   # ratios to itself
    assert "LM head is" in md
    assert "not charged to the excess runs" in md                # an excess run: its reference
    no_ref = {**results, "meta": {**results["meta"], "reference_windows": 0,
                                  "reference_flops": 0}}
    assert "used only to mark the informative held-out tokens" in markdown(no_ref)


def test_more_seeds_can_be_merged_into_an_earlier_report(bench):
    from tokensieve.bench.train_bench import merge_results

    results, *_ = bench
    meta = results["meta"]
    old = {"meta": meta, "runs": [r for r in results["runs"] if r["seed"] == 0]}
    new = {"meta": meta, "runs": [r for r in results["runs"] if r["seed"] == 1]}
    both = merge_results(new, old)
    assert len(both["runs"]) == 10 and both["meta"]["seeds"] == [0, 1]
    assert both["meta"]["merged_runs"] == 5
    assert len(merge_results(results, old)["runs"]) == 10       # same (label, seed): new wins
    other = {**meta, "config": {**meta["config"], "steps": 5}}
    with pytest.raises(UsageError, match="steps"):
        merge_results({"meta": other, "runs": []}, old)


def test_flops_to_reach_interpolates_and_says_never():
    curve = [{"flops": 0, "loss": 10.0}, {"flops": 100, "loss": 6.0},
             {"flops": 200, "loss": 4.0}]
    assert flops_to_reach(curve, 5.0) == pytest.approx(150.0)
    assert flops_to_reach(curve, 6.0) == pytest.approx(100.0)
    assert flops_to_reach(curve, 3.9) is None
    meta = {"config": {"block_len": 8, "batch": 1, "lr": 1e-3, "steps": 2, "seeds": 1, "seed": 0,
                       "informative": 0.3},
            "shape": {"hidden": 8, "layers": 1, "heads": 1, "kv_heads": 1, "intermediate": 8},
            "vocab": 10, "params": 100, "budget_flops": 200, "head_share": 0.5,
            "reference": "r", "reference_windows": 1, "reference_flops": 50, "eval_windows": 1,
            "threads": 1, "seconds": 1, "estimate_s": 60}
    m = {"loss": 4.0, "loss_informative": 5.0, "accuracy": 0.1}
    run = {"seed": 0, "steps": 2, "tokens": 10, "flops": 200, "train_s": 1.0, "dev": m,
           "test": m, "curve": curve, "method": "all", "keep": None}
    slow = dict(run, label="eslm@0.3", method="eslm", keep=0.3,
                curve=[{"flops": 0, "loss": 10.0}, {"flops": 200, "loss": 5.0}],
                dev=dict(m, loss=5.0), test=dict(m, loss=4.5))
    md, target_md = markdown({"meta": meta, "runs": [dict(run, label="all"), slow]}).split(
        "## Targets")
    assert "| **eslm@0.3** |" in md and md.rstrip("\n| ").count("| – |") == 1
    assert "| eslm@0.3 | – | +0.500 | – | needs ≥ 2 seeds |" in target_md
    fast = dict(slow, seed=1, curve=[{"flops": 0, "loss": 10.0}, {"flops": 200, "loss": 3.0}])
    runs = [dict(run, label="all"), dict(run, label="all", seed=1), slow, fast]
    row = next(r for r in summary({"meta": meta, "runs": runs}) if r["label"] == "eslm@0.3")
    assert row["seeds"] == 2 and row["reach_ratio"] != row["reach_ratio"]   # one seed: never


def test_informative_tokens_are_the_top_share_by_reference_loss():
    ref = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 3.0, 9.0, 0.5]])
    mask = informative_mask(ref, 0.5)
    assert mask.tolist() == [[False, True, False, False], [False, True, True, False]]


def test_the_schedule_warms_up_then_decays_by_flops():
    assert lr_at(0.0, 1.0) == pytest.approx(0.1)
    assert lr_at(0.05, 1.0) == pytest.approx(1.0)
    assert lr_at(1.0, 1.0) == pytest.approx(0.1)
    assert lr_at(0.3, 1.0) > lr_at(0.6, 1.0) > lr_at(0.9, 1.0)


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError, match="keep"):
        parse_run("eslm@1.5")
    with pytest.raises(UsageError, match="number"):
        parse_run("eslm@x")
    assert parse_run("pdl").keep is None and parse_run("eslm@0.3").label == "eslm@0.3"
    with pytest.raises(UsageError, match="twice"):
        BenchConfig(runs=["all", "all"]).check()
    with pytest.raises(UsageError, match="multiple"):
        BenchConfig(size=ModelSize(hidden=30, heads=4)).check()


@pytest.mark.parametrize("argv, words", [
    (["--runs", "bogus"], "bogus"), (["--runs", "eslm@0"], "keep"),
    (["--steps", "0"], "steps"), (["--seeds", "0"], "seeds"), (["--heads", "3"], "multiple"),
    (["--threads", "0"], "threads"), (["--merge", "/nonexistent.json"], "merge")])
def test_cli_bad_settings_give_one_line(argv, words, capsys):
    from tokensieve.cli import main

    assert main(["bench", "train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith("tokensieve: error")


def test_cli_bad_option_values_give_one_line(capsys):
    from tokensieve.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "train", "--steps", "many"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
