"""Smoke test of the KV benchmark harness: one short item, two policies, the report."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("wonderwords")


def test_bench_kv_runs_end_to_end(tmp_path):
    from tokensieve.bench.kv_bench import run_bench

    out = tmp_path / "kv"
    res = run_bench(["passkey"], [256], 1, [0.5], ["tokensieve:default", "tokensieve:random"],
                    out, fidelity_length=192)
    rows = {(s["method"], s["keep"]): s for s in res["summary"]}
    assert set(rows) == {("full", 1.0), ("tokensieve:default", 0.5), ("tokensieve:random", 0.5)}
    for key in (("tokensieve:default", 0.5), ("tokensieve:random", 0.5)):
        s = rows[key]
        assert s["errors"] == 0
        assert s["kv_kept"] == pytest.approx(0.5, abs=0.01)
        assert s["kl"] is not None and s["kl"] >= 0 and 0 <= s["top1"] <= 1
    assert rows[("full", 1.0)]["kv_kept"] == pytest.approx(1.0)
    assert rows[("full", 1.0)]["of_full"] == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "tokensieve:default" in report and "| 0.5 |" in report and "± " in report
    assert json.loads((out / "results.json").read_text())["meta"]["lengths"] == [256]
    # resumable: a second run reuses every row
    lines = (out / "records.jsonl").read_text().count("\n")
    run_bench(["passkey"], [256], 1, [0.5], ["tokensieve:default", "tokensieve:random"],
              out, fidelity_length=192)
    assert (out / "records.jsonl").read_text().count("\n") == lines


def test_a_chunked_method_passes_its_chunk_to_kv_answer(monkeypatch):
    """``tokensieve:<policy>/c<N>`` runs kv.answer with chunk=N (chunked prefill)."""
    from types import SimpleNamespace

    from tokensieve.bench import kv_bench

    seen = []

    def fake_answer(model, tok, context, questions, **kw):
        seen.append(kw)
        return SimpleNamespace(answers=["x"], stored_bytes=1, prefill_seconds=0.0,
                               decode_seconds=0.0)
    monkeypatch.setattr(kv_bench.kv, "answer", fake_answer)
    item = SimpleNamespace(context="c", questions=["q"], max_new_tokens=4)
    kv_bench.run_method(None, None, item, "tokensieve:information:attention=0.3/c512", 0.25)
    kv_bench.run_method(None, None, item, "tokensieve:default+q", 0.25)
    assert (seen[0]["policy"], seen[0]["chunk"], seen[0]["query_aware"]) == \
        ("information:attention=0.3", 512, False)
    assert (seen[1]["policy"], seen[1]["chunk"], seen[1]["query_aware"]) == \
        ("default", None, True)
    with pytest.raises(SystemExit, match="bad chunk"):
        kv_bench.run_method(None, None, item, "tokensieve:default/cX", 0.25)
