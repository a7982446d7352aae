"""The VLM benchmark's arithmetic and report, on hand-made numbers (the run itself needs the
small VLM; `tokensieve bench vlm --quick` is the smoke run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokensieve.bench.vlm_bench import configs, parse, relative
from tokensieve.bench.vlm_report import markdown


def test_relative_accuracy_and_paired_standard_error():
    base = np.array([1, 1, 0, 0], float)
    got = np.array([1, 0, 0, 1], float)
    r, se = relative(base, got)
    assert r == pytest.approx(100.0)                       # 2 of 4 right either way
    d = got - base                                           # [0, -1, 0, 1]
    assert se == pytest.approx(100 * d.std(ddof=1) / 2 / 0.5)
    r, _ = relative(base, np.array([1, 0, 0, 0], float))
    assert r == pytest.approx(50.0)
    assert all(math.isnan(x) for x in relative(np.zeros(3), np.ones(3)))   # no base accuracy


def test_configs_cover_every_cell_once_unpruned_first():
    cells = configs(["a", "b"], ["f"], [0.25, 0.125], layers=2)
    assert cells[0]["name"] == "unpruned" and cells[0]["stage"] is None
    assert len(cells) == 1 + 2 * (2 + 1)
    inside = [c for c in cells if c["stage"] == "inside"]
    assert {c["layer"] for c in inside} == {2} and {c["name"] for c in inside} == {"f@L2"}
    assert len({(c["name"], c["keep"]) for c in cells}) == len(cells)


def test_quick_mode_is_small_and_bad_sizes_are_refused():
    a = parse(["--quick"])
    assert (a.single, a.grids, a.keeps) == (12, 8, [0.25, 0.125])
    with pytest.raises(SystemExit):
        parse(["--single", "0", "--grids", "0"])


def test_the_default_method_is_timed_and_is_a_before_method():
    from tokensieve import vlm
    from tokensieve.bench.vlm_bench import BEFORE

    a = parse([])
    assert a.speed_methods[0] == vlm.DEFAULT_METHOD and vlm.DEFAULT_METHOD in BEFORE


def test_markdown_orders_methods_and_reports_speed_ratios():
    meta = {"split": "test", "questions": 4, "single": 2, "grids": 1, "threads": 1,
            "seconds": 3.0, "layer": 2, "counts": {"all": 4, "single": 2},
            "unpruned": {"all": 0.5, "single": 1.0}, "chance": {"single": 0.5},
            "keeps": [0.25]}
    rows = [{"method": "random", "stage": "before", "keep": 0.25,
             "relative": {"all": 50.0, "single": 50.0}, "se": {"all": 10.0, "single": 5.0}},
            {"method": "mmtok", "stage": "before", "keep": 0.25,
             "relative": {"all": 100.0, "single": 100.0}, "se": {"all": 0.0, "single": 0.0}}]
    speed = {"1": {"unpruned": {"prefill_s": 1.0, "generate_s": 2.0, "kv_bytes": 2**20},
                   "random@0.25": {"prefill_s": 0.25, "generate_s": 1.0, "kv_bytes": 2**18}}}
    md = markdown({"meta": meta, "rows": rows, "speed": speed, "pictures": []})
    assert md.index("| mmtok | before | 100.0 ± 0.0") < md.index("| random | before | 50.0 ± 10.0")
    assert "| 1 | random@0.25 | 0.250 | 4.00 | 1.000 | 2.00 | 0.25 |" in md
    assert "| single | 2 | 100.0% | 50.0% |" in md


def test_aware_against_the_best_agnostic_cell_on_corner_questions():
    from tokensieve.bench.vlm_report import aware_vs_agnostic

    qtypes = ["single", "corner_what", "corner_what", "corner_which", "count"]
    rows = [{"name": "fastv@L21", "method": "fastv", "keep": 0.125, "question_aware": True,
             "correct": [0, 1, 1, 1, 0]},
            {"name": "grid", "method": "grid", "keep": 0.125, "question_aware": False,
             "correct": [1, 1, 0, 0, 1]},
            {"name": "random", "method": "random", "keep": 0.125, "question_aware": False,
             "correct": [1, 0, 0, 0, 1]},
            {"name": "todre", "method": "todre", "keep": 0.25, "question_aware": True,
             "correct": [1, 1, 1, 1, 1]}]
    rows.append({"name": "random@L21", "method": "random", "keep": 0.125, "stage": "inside",
                 "layer": 21, "question_aware": False, "correct": [1, 1, 1, 1, 1]})
    for r in rows:
        r.setdefault("stage", "before")
        r.update(relative={"all": 100.0}, se={"all": 0.0})
    results = {"meta": {"qtypes": qtypes, "keeps": [0.125]}, "rows": rows}
    (c,) = aware_vs_agnostic(results, 0.125)   # one aware cell here; random@L21 is no peer
    assert (c["aware"], c["agnostic"], c["n"]) == ("fastv@L21", "grid", 3)
    assert c["aware_acc"] == pytest.approx(1.0) and c["agnostic_acc"] == pytest.approx(1 / 3)
    d = np.array([0, 1, 1], float)                            # corner questions only
    assert c["lead"] == pytest.approx(100 * d.mean())
    assert c["se"] == pytest.approx(100 * d.std(ddof=1) / math.sqrt(3))
    assert aware_vs_agnostic({"meta": {"keeps": [0.125]}, "rows": rows}, 0.125) == []
    md = markdown({**results, "meta": {**results["meta"], "split": "dev", "questions": 5,
                   "single": 1, "grids": 1, "threads": 1, "seconds": 1.0, "layer": [2, 21],
                   "counts": {"all": 5}, "unpruned": {"all": 0.6}, "chance": {}}, "speed": {}})
    assert "| 0.125 | fastv@L21 | 100.0% | grid | 33.3% | +66.7" in md and "2, 21" in md


def test_report_only_without_results_is_a_one_line_error(tmp_path, capsys):
    from tokensieve.bench.vlm_bench import main

    assert main(["--report-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "results.json does not exist" in err and "\n" not in err
