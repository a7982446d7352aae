"""tokensieve.dataset / compress-dataset, local engine: JSONL and Parquet round trips keep
every column, bad records land with their error status, an interrupted run (an exception,
or kill -9 of the CLI) resumes without losing or duplicating a record, CLI exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokensieve import InputError, UsageError
from tokensieve.dataset import OUTPUT_COLUMNS, compress_dataset

SENTENCES = [
    "The harbour authority reported that container traffic rose for the third month in a row.",
    "Engineers traced the outage to a misconfigured load balancer in the western region.",
    "The committee postponed its vote until the auditors deliver their final report.",
    "Rainfall in the valley was well below the seasonal average, worrying local farmers.",
    "The new library wing opens in spring and will hold the city's map collection.",
    "Researchers found that the enzyme remains stable at temperatures above ninety degrees.",
    "Ticket sales for the festival doubled after the headline act was announced.",
    "The museum's restoration team spent two years cleaning the ceiling fresco.",
    "Analysts expect the central bank to hold interest rates steady this quarter.",
    "A volunteer crew rebuilt the footbridge that the spring floods had washed away.",
]
N_GOOD = 24
KEEP = 0.5


def good_records(n: int = N_GOOD) -> list[dict]:
    """Real-looking short documents (3 sentences, about 55 tokens each), with extra columns."""
    rows = []
    for i in range(n):
        text = " ".join(SENTENCES[(i + k * 3) % len(SENTENCES)] for k in range(3))
        rows.append({"id": f"doc-{i:03d}", "text": text, "source": f"feed-{i % 3}",
                     "score": i / 10, "tags": ["news", str(i % 2)]})
    return rows


def write_jsonl(path: Path, rows: list[dict], bad_lines: bool = True) -> list[str]:
    """Write rows plus bad records; returns the expected status of every record in order."""
    lines = [json.dumps(r).encode() for r in rows]
    statuses = ["ok"] * len(rows)
    if bad_lines:
        extra = [
            (b'{"id": "bad-utf8", "text": "caf\xe9 au lait", "source": "x"}', "error:encoding"),
            (b'{"id": "bad-json", "text": ', "error:json"),
            (json.dumps({"id": "empty", "text": "  \n "}).encode(), "error:empty"),
            (json.dumps({"id": "huge", "text": "word " * 3000}).encode(), "error:too_large"),
            (json.dumps({"id": "no-text", "source": "y"}).encode(), "error:missing"),
            (json.dumps({"id": "number", "text": 42}).encode(), "error:type"),
            (json.dumps({"id": "protected", "text": "Account ID 4417-2209-8812-0043-7781 "
                         "and 9921-3312-0045-6671-2290 must stay."}).encode(), "error:budget"),
        ]
        for k, (line, status) in enumerate(extra):  # spread among the good records
            at = 3 + 4 * k
            lines.insert(at, line)
            statuses.insert(at, status)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return statuses


OPTIONS = {"keep": KEEP, "protect": [r"\d{4}(?:-\d{4}){4}"], "max_chars": 10_000}


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    statuses = write_jsonl(folder / "in.jsonl", good_records())
    return folder / "in.jsonl", statuses


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One uninterrupted local run: the output every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "out.jsonl"
    report = compress_dataset(str(corpus[0]), str(out), id_field="id", batch_size=4,
                              progress=False, **OPTIONS)
    return report, read_out(out)


@pytest.mark.model
def test_jsonl_round_trip_keeps_columns_and_reports_bad_records(corpus, reference):
    report, rows = reference
    statuses = corpus[1]
    assert report.records_in == report.records_out == len(statuses) == len(rows)
    assert [r["status"] for r in rows] == statuses
    assert report.errors == sum(s != "ok" for s in statuses) == 7
    for row in rows:
        assert set(OUTPUT_COLUMNS.values()) <= set(row)
        if row["status"] == "ok":
            assert {"id", "text", "source", "score", "tags"} <= set(row)
            assert row["compressed_tokens"] <= row["original_tokens"] * KEEP + 1
            assert row["error"] is None and row["compressed_text"]
        else:
            assert row["compressed_text"] is None and row["error"]
    by_id = {r.get("id"): r for r in rows}
    assert by_id["bad-utf8"]["source"] == "x"  # what could be read of a bad line is kept
    # ... and so is the line itself (bytes that are not UTF-8 as \xNN escapes)
    assert by_id["bad-utf8"]["raw_line"] == '{"id": "bad-utf8", "text": "caf\\xe9 au lait", ' \
        '"source": "x"}'
    assert rows[statuses.index("error:json")]["raw_line"] == '{"id": "bad-json", "text": '
    assert sum("raw_line" in r for r in rows) == 2
    assert "UTF-8" in by_id["bad-utf8"]["error"]
    assert "protected text" in by_id["protected"]["error"]
    assert "10000" in by_id["huge"]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert report.tokens_in == sum(r["original_tokens"] for r in ok) > report.tokens_out


@pytest.mark.model
def test_interrupted_run_resumes_each_record_exactly_once(corpus, reference, tmp_path):
    out = tmp_path / "out.jsonl"

    class Stop(Exception):
        pass

    def stop_after_two_parts(done: int) -> None:
        if done >= 8:
            raise Stop

    with pytest.raises(Stop):
        compress_dataset(str(corpus[0]), str(out), id_field="id", batch_size=4,
                         progress=False, _on_part=stop_after_two_parts, **OPTIONS)
    assert not out.exists()
    parts = sorted(p.name for p in (tmp_path / "out.jsonl.parts").glob("part-*"))
    assert len(parts) == 2
    report = compress_dataset(str(corpus[0]), str(out), id_field="id", batch_size=4,
                              progress=False, **OPTIONS)
    rows = read_out(out)
    ids = [r.get("id") for r in rows]
    print(f"resume: {report.skipped_resumed} done before the interruption, "
          f"{report.processed} after, {report.records_in} in, {report.records_out} out, "
          f"{len(ids) - len(set(ids))} duplicates")
    assert report.skipped_resumed == 8 and report.processed == report.records_in - 8
    assert report.records_in == report.records_out == len(rows)
    assert len(set(ids)) == len(ids)  # every id once ("bad-json" has none: it is one record)
    assert rows == reference[1]
    assert not (tmp_path / "out.jsonl.parts").exists()


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "tokensieve", "compress-dataset", *args],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.model
def test_kill_minus_9_and_restart_through_the_cli(corpus, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    args = [str(corpus[0]), str(out), "--id-field", "id", "--batch-size", "2", "--keep",
            str(KEEP), "--protect", OPTIONS["protect"][0], "--max-chars", "10000",
            "--no-progress"]
    env = {**os.environ, "OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tokensieve", "compress-dataset", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    parts = tmp_path / "out.jsonl.parts"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(parts.glob("part-*"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_parts = len(list(parts.glob("part-*")))
    assert 3 <= killed_parts < (len(reference[1]) + 1) // 2 and not out.exists()
    res = _cli(*args, "--json", env=env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    rows = read_out(out)
    print(f"kill -9 resume: {report['skipped_resumed']} records in {killed_parts} parts "
          f"survived, {report['processed']} after restart, {report['records_in']} in, "
          f"{report['records_out']} out")
    assert report["skipped_resumed"] >= 2 * killed_parts - 2
    assert report["skipped_resumed"] + report["processed"] == report["records_in"]
    assert report["records_in"] == report["records_out"] == len(rows)
    assert rows == reference[1]


@pytest.mark.model
def test_parquet_round_trip_keeps_types(tmp_path, corpus):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = good_records(6)
    rows[2]["text"] = ""
    table = pa.Table.from_pylist(rows)
    table = table.append_column("when", pa.array([1_700_000_000_000 + i for i in range(6)],
                                                 pa.timestamp("ms")))
    pq.write_table(table, tmp_path / "in.parquet")
    report = compress_dataset(str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
                              batch_size=4, progress=False, keep=KEEP)
    out = pq.read_table(tmp_path / "out.parquet")
    assert report.records_in == report.records_out == out.num_rows == 6
    assert out.schema.names == [*table.schema.names, *OUTPUT_COLUMNS.values()]
    for name in table.schema.names:
        assert out.schema.field(name).type == table.schema.field(name).type
        assert out.column(name).to_pylist() == table.column(name).to_pylist()
    assert out.column("status").to_pylist() == ["ok", "ok", "error:empty", "ok", "ok", "ok"]
    # Parquet in, JSONL out (timestamps as ISO text), and JSONL in, Parquet out
    compress_dataset(str(tmp_path / "in.parquet"), str(tmp_path / "out.jsonl"),
                     progress=False, keep=KEEP)
    back = read_out(tmp_path / "out.jsonl")
    assert [r["compressed_text"] for r in back] == out.column("compressed_text").to_pylist()
    assert back[0]["when"].startswith("2023-11-14")
    report = compress_dataset(str(corpus[0]), str(tmp_path / "mixed.parquet"), id_field="id",
                              progress=False, **OPTIONS)
    mixed = pq.read_table(tmp_path / "mixed.parquet")
    assert mixed.num_rows == len(corpus[1])
    assert mixed.column("status").to_pylist() == corpus[1]
    assert "42" in mixed.column("text").to_pylist()  # the text field holds 42 once: as text
    assert any("'text'" in note for note in report.notes)


def test_duplicate_ids_and_column_clashes_fail_up_front(tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [{"id": 1, "text": "a b c"}, {"id": 1, "text": "d e f"}], bad_lines=False)
    with pytest.raises(InputError, match="appears twice"):
        compress_dataset(str(path), str(tmp_path / "o.jsonl"), id_field="id", progress=False)
    write_jsonl(path, [{"text": "a b c", "status": "draft"}], bad_lines=False)
    with pytest.raises(UsageError, match="column-prefix"):
        compress_dataset(str(path), str(tmp_path / "o.jsonl"), progress=False)
    with pytest.raises(UsageError, match="engine"):
        compress_dataset(str(path), str(tmp_path / "o.jsonl"), engine="spark")
    with pytest.raises(UsageError, match="ray_window_bytes"):
        compress_dataset(str(path), str(tmp_path / "o.jsonl"), ray_window_bytes=0)
    assert not list(tmp_path.glob("o.jsonl*"))


@pytest.mark.model
def test_resume_refuses_other_settings_and_a_finished_output(tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, good_records(3), bad_lines=False)
    out = tmp_path / "o.jsonl"

    def stop(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_dataset(str(path), str(out), batch_size=1, keep=0.5, progress=False,
                         _on_part=stop)
    with pytest.raises(UsageError, match="options differ"):
        compress_dataset(str(path), str(out), batch_size=1, keep=0.3, progress=False)
    report = compress_dataset(str(path), str(out), batch_size=1, keep=0.5, progress=False)
    assert (report.skipped_resumed, report.processed, report.records_out) == (1, 2, 3)
    with pytest.raises(UsageError, match="finished run"):
        compress_dataset(str(path), str(out), keep=0.5, progress=False)
    report = compress_dataset(str(path), str(out), keep=0.5, progress=False, overwrite=True,
                              column_prefix="ts_")
    assert report.skipped_resumed == 0 and "ts_compressed_text" in read_out(out)[0]


def test_missing_ray_names_the_extra_before_any_work(monkeypatch, tmp_path):
    from tokensieve.dataset.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"tokensieve\[ray\]"):
        import_ray()
    write_jsonl(tmp_path / "in.jsonl", [{"text": "a b c"}], bad_lines=False)
    with pytest.raises(UsageError, match=r"tokensieve\[ray\]"):
        compress_dataset(str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), engine="ray")
    assert not list(tmp_path.glob("o.jsonl*"))


@pytest.mark.parametrize("setup,args,code,message", [
    (None, ["/no/such.jsonl", "o.jsonl"], 2, "no such file"),
    ("plain", ["in.jsonl", "o.csv"], 2, "cannot tell the format"),
    ("plain", ["in.jsonl", "o.jsonl", "--text-field", "body"], 2, "no record has a 'body'"),
    ("clash", ["in.jsonl", "o.jsonl"], 2, "--column-prefix"),
    ("dup", ["in.jsonl", "o.jsonl", "--id-field", "id"], 1, "appears twice"),
    ("plain", ["in.jsonl", "o.jsonl", "--engine", "spark"], 2, "invalid choice"),
    ("plain", ["in.jsonl", "o.jsonl", "--keep", "2"], 2, "keep"),
    ("plain", ["in.jsonl", "o.jsonl", "--batch-size", "0"], 2, "batch_size"),
])
def test_cli_errors_are_one_line_with_an_exit_code(tmp_path, setup, args, code, message):
    rows = {"plain": [{"id": 1, "text": "a b c"}], "clash": [{"text": "a", "error": "x"}],
            "dup": [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]}
    if setup:
        write_jsonl(tmp_path / "in.jsonl", rows[setup], bad_lines=False)
    res = _cli(*args, cwd=tmp_path)
    assert res.returncode == code, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.model
def test_score_task_adds_surprisal_per_record(tmp_path):
    """task='score': each ok record carries the surprisal inspect.surprise gives its text;
    bad records keep their error status; compress-only options are refused, not ignored."""
    from tokensieve.inspect import surprise

    src = tmp_path / "in.jsonl"
    rows = good_records(5)
    rows[2]["text"] = "Zq7 vortex ledger 88-K flange, umbrella; thirty quiet giraffes Xw."
    statuses = write_jsonl(src, rows, bad_lines=False)
    with open(src, "ab") as f:
        f.write(json.dumps({"id": "empty", "text": " "}).encode() + b"\n")
    out = tmp_path / "scored.jsonl"
    report = compress_dataset(str(src), str(out), task="score", id_field="id", batch_size=2,
                              progress=False)
    got = read_out(out)
    assert report.records_in == report.records_out == len(got) == len(statuses) + 1
    assert [r["status"] for r in got] == [*statuses, "error:empty"]
    assert "compressed_text" not in got[0] and got[0]["source"] == rows[0]["source"]
    for row in got[:-1]:
        want = surprise(row["text"], progress=False)
        assert row["tokens"] == len(want.tokens)
        assert row["surprisal_total"] == pytest.approx(want.total, rel=1e-5)
        assert row["surprisal_mean"] == pytest.approx(want.mean, rel=1e-5)
        assert row["perplexity"] == pytest.approx(want.perplexity, rel=1e-5)
    # the word salad is the most surprising record
    assert max(got[:-1], key=lambda r: r["surprisal_mean"])["id"] == rows[2]["id"]
    assert got[-1]["surprisal_mean"] is None and got[-1]["error"]
    assert report.tokens_in == sum(r["tokens"] for r in got[:-1]) and report.tokens_out == 0
    for option in ({"keep": 0.5}, {"question": "Why?"}, {"method": "bm25"}):
        with pytest.raises(UsageError, match=next(iter(option))):
            compress_dataset(str(src), str(tmp_path / "x.jsonl"), task="score", **option)
    with pytest.raises(UsageError, match="task"):
        compress_dataset(str(src), str(tmp_path / "x.jsonl"), task="summarise")


# ----------------------------------------------------------------- never lose or duplicate


CHEAP = {"method": "random", "keep": 0.5, "progress": False}  # no LM, only the tokenizer


@pytest.mark.model
@pytest.mark.parametrize("id_field", [None, "id"])
def test_resume_refuses_an_input_that_changed_since_the_interruption(tmp_path, id_field):
    """IN = a b c d, interrupted after a b, then reordered to c d a b (same size, same
    count). Before, the resume wrote ids a b a b "(OK)", or with an id field a resumed part
    replaced a finished one and in 4 != out 2."""
    rows = [{"id": c, "text": f"Record {c} says the harbour traffic rose again."}
            for c in "abcd"]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, rows, bad_lines=False)
    size = src.stat().st_size

    def stop(done):
        if done >= 2:
            raise KeyboardInterrupt

    opts = {"id_field": id_field, "batch_size": 1, **CHEAP}
    with pytest.raises(KeyboardInterrupt):
        compress_dataset(str(src), str(out), _on_part=stop, **opts)
    write_jsonl(src, [rows[2], rows[3], rows[0], rows[1]], bad_lines=False)
    assert src.stat().st_size == size
    with pytest.raises(UsageError, match="input changed"):
        compress_dataset(str(src), str(out), **opts)
    assert not out.exists() and len(list((tmp_path / "out.jsonl.parts").glob("part-*"))) == 2
    report = compress_dataset(str(src), str(out), overwrite=True, **opts)
    assert [r["id"] for r in read_out(out)] == ["c", "d", "a", "b"]
    assert (report.records_in, report.records_out, report.skipped_resumed) == (4, 4, 0)


def test_part_names_never_collide(tmp_path):
    """Two parts over the same positions (what a changed input produced) are two files: a
    finished part is never replaced, also after a restart."""
    from tokensieve.dataset.checkpoint import KEY, POS, Checkpoint

    def part(keys):
        return [{POS: i, KEY: k} for i, k in enumerate(keys)]

    out = str(tmp_path / "o.jsonl")
    ckpt = Checkpoint(out, {"v": 1}, part_format="jsonl")
    assert ckpt.open() == 0
    ckpt.write_part(part("ab"))
    ckpt.write_part(part("cd"))
    assert len(ckpt.parts()) == 2
    ckpt.close()
    again = Checkpoint(out, {"v": 1}, part_format="jsonl")
    assert again.open() == 4 and all(k in again.done for k in "abcd") and "e" not in again.done
    again.write_part(part("ef"))
    assert len(again.parts()) == 3
    again.close()


def test_merge_streams_overlapping_parts_in_input_order(tmp_path):
    """Parts whose positions interleave (a resume that skipped finished records) merge by
    position, each record once, and the parts are removed."""
    from tokensieve.dataset.checkpoint import KEY, POS, Checkpoint

    out = tmp_path / "o.jsonl"
    ckpt = Checkpoint(str(out), {"v": 1}, part_format="jsonl")
    ckpt.open()
    for positions in ([0, 2, 4], [1, 3], [5], [6, 7, 9], [8]):
        ckpt.write_part([{POS: i, KEY: f"#{i}", "n": i, "status": "error:empty"}
                         for i in positions])
    stats = ckpt.merge("jsonl", {"status": "status", "original_tokens": "t"}, 10)
    assert [r["n"] for r in read_out(out)] == list(range(10)) and stats.records_out == 10
    assert "_tokensieve_pos" not in read_out(out)[0]
    assert not (tmp_path / "o.jsonl.parts").exists()


@pytest.mark.model
def test_bom_and_unreadable_lines_keep_their_content(tmp_path):
    """A UTF-8 byte-order mark does not make record 0 an error; a line that cannot be read
    (not JSON, not UTF-8, not an object) keeps its text in raw_line, JSONL and Parquet out."""
    from tokensieve.dataset.io import read_records

    src = tmp_path / "in.jsonl"
    lines = [b'\xef\xbb\xbf{"id": "first", "text": "The harbour reopened after the storm."}',
             b'{"id": "cut", "text": "unterminated',
             b'{"id": "latin1", "text": "caf\xe9"',
             b"[1, 2]",
             b'{"id": "last", "text": "Engineers traced the outage to a load balancer."}']
    src.write_bytes(b"\r\n".join(lines) + b"\r\n")
    raw = ['{"id": "cut", "text": "unterminated', '{"id": "latin1", "text": "caf\\xe9"',
           "[1, 2]"]
    recs = list(read_records(str(src)))
    assert recs[0].read_error is None and recs[0].row["id"] == "first"
    assert [r.raw for r in recs] == [None, *raw, None]
    out = tmp_path / "out.jsonl"
    report = compress_dataset(str(src), str(out), id_field="id", **CHEAP)
    rows = read_out(out)
    assert [r["status"] for r in rows] == ["ok", "error:json", "error:encoding", "error:json",
                                          "ok"]
    assert [r.get("raw_line") for r in rows] == [None, *raw, None]
    assert report.records_out == 5 and rows[0]["id"] == "first"
    pq = pytest.importorskip("pyarrow.parquet")
    compress_dataset(str(src), str(tmp_path / "out.parquet"), id_field="id", **CHEAP)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("raw_line").to_pylist() == [None, *raw, None]
    assert table.column("id").to_pylist()[0] == "first"


def test_memory_of_ids_does_not_grow_with_the_corpus(tmp_path):
    """The scan's duplicate-id check, a resume's set of finished ids and the merge hold no
    Python structure of every id: their peak Python memory is the same for N and 2N records
    (before, each grew by about 100 bytes per id)."""
    import tracemalloc

    from tokensieve.dataset.checkpoint import KEY, POS, Checkpoint
    from tokensieve.dataset.job import _scan

    def peak(fn):
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def peaks(n):
        folder = tmp_path / str(n)
        folder.mkdir()
        src, out = folder / "in.jsonl", str(folder / "o.jsonl")
        src.write_text("".join(json.dumps({"id": f"doc-{i:09d}", "text": "x"}) + "\n"
                               for i in range(n)))
        ckpt = Checkpoint(out, {"v": 1}, part_format="jsonl")
        ckpt.open()
        for start in range(0, n, 1000):
            ckpt.write_part([{POS: i, KEY: f'"doc-{i:09d}"', "status": "error:empty"}
                             for i in range(start, min(n, start + 1000))])
        del ckpt  # as a run that stopped here
        resumed = Checkpoint(out, {"v": 1}, part_format="jsonl")
        got = [peak(lambda: _scan(str(src), "jsonl", "text", "id")),
               peak(resumed.open)]
        assert len(resumed.done) == n and f'"doc-{n - 1:09d}"' in resumed.done
        stats = []
        got.append(peak(lambda: stats.append(resumed.merge(
            "jsonl", {"status": "status", "original_tokens": "t"}, n))))
        assert stats[0].records_out == n
        return np.array(got)

    import numpy as np

    n = 10_000
    small, large = peaks(n), peaks(2 * n)
    print(f"peak Python memory (scan, resume, merge), {n} ids: {small // 1024} KiB; "
          f"{2 * n} ids: {large // 1024} KiB")
    assert (large - small < 200_000).all(), (small, large)


def test_ray_windows_are_bounded_in_bytes_as_well_as_records():
    """The driver hands Ray at most ``window`` records and ``window_bytes`` bytes at a time
    (a record larger than that goes alone); order kept, nothing lost."""
    from tokensieve.dataset.ray_engine import approx_bytes, windows

    def entry(i, n):
        text = "w" * n
        return {"pos": i, "text": text}, {"id": i, "text": text}, f"#{i}"

    entries = [entry(i, 1000) for i in range(10)] + [entry(10, 50_000)] + \
        [entry(i, 10) for i in range(11, 20)]
    chunks = list(windows(iter(entries), 8, 5_000))
    assert [e for c in chunks for e in c] == entries
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2, 1, 8, 1]
    for c in chunks:
        size = sum(approx_bytes(row) + approx_bytes(item["text"]) for item, row, _ in c)
        assert len(c) == 1 or size <= 5_000
    assert approx_bytes({"id": 1, "text": "w" * 1000}) > 1000


def test_classify_checks_text_as_every_place_does():
    """A record's text goes through the one check of user text (inputs.decode_text): bytes
    are decoded, and NUL bytes or a lone surrogate are refused up front with the field's
    name and the fix, instead of reaching the compressor (and a binary value with NUL bytes
    is an encoding error, like undecodable bytes)."""
    from tokensieve.dataset.records import classify

    assert classify(b"caf\xc3\xa9", "text", 100) == ("café", None)
    text, (kind, message) = classify(b"caf\xe9", "text", 100)
    assert text is None and kind == "encoding"
    assert message == "'text' is not valid UTF-8 (byte 3); convert it to UTF-8 text first."
    assert classify("a\x00b", "body", 100) == (None, (
        "input", "'body' contains NUL bytes, so it looks binary; pass UTF-8 text."))
    assert classify(b"a\x00b", "body", 100)[1][0] == "encoding"
    assert classify("a\ud800b", "text", 100)[1] == (
        "input", "'text' is not valid UTF-8 (unpaired surrogate at character 1); convert it "
        "to UTF-8 text first.")
    assert classify(42, "text", 100)[1] == ("type", "'text' is a int, not a string")
    assert classify(" \n", "text", 100)[1][0] == "empty"
    assert classify("abc", "text", 2)[1][0] == "too_large"
