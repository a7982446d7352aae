"""compress-dataset on Ray (a local Ray with 2 CPUs): the same output as the local engine
record for record, bad records with their error, and an interrupted run resumed without a
lost or duplicated record."""

from __future__ import annotations

import pytest
from test_dataset import OPTIONS, good_records, read_out, write_jsonl

from tokensieve.dataset import compress_dataset

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.model]


@pytest.fixture(scope="module")
def ray_local():
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-corpus")
    statuses = write_jsonl(folder / "in.jsonl", good_records(30))
    path = folder / "in.jsonl"
    # the local engine's output, with the actors' single torch thread
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compress_dataset(str(path), str(folder / "local.jsonl"), id_field="id", batch_size=4,
                         progress=False, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    return path, statuses, read_out(folder / "local.jsonl")


def test_ray_matches_local_record_for_record(ray_local, corpus, tmp_path):
    path, statuses, local = corpus
    out = tmp_path / "ray.jsonl"
    report = compress_dataset(str(path), str(out), engine="ray", id_field="id", batch_size=4,
                              concurrency=2, progress=False, **OPTIONS)
    rows = read_out(out)
    assert report.records_in == report.records_out == len(rows) == len(statuses) == 37
    assert [r["status"] for r in rows] == statuses  # bad records land with their error
    assert report.errors == 7
    assert rows == local


def test_ray_interrupted_then_resumed_loses_and_duplicates_nothing(ray_local, corpus, tmp_path,
                                                                    monkeypatch):
    path, statuses, local = corpus
    out = tmp_path / "ray.jsonl"

    class Stop(Exception):
        pass

    def stop(done: int) -> None:
        if done >= 12:
            raise Stop

    with pytest.raises(Stop):
        compress_dataset(str(path), str(out), engine="ray", id_field="id", batch_size=4,
                         concurrency=2, progress=False, _on_part=stop, **OPTIONS)
    assert not out.exists()
    # the 25 records left go to Ray in two windows (16 + 9): two actor pools, one output
    from tokensieve.dataset import ray_engine

    windows: list[int] = []
    run_window = ray_engine._run_window

    def counted(ray_, chunk, *args, **kwargs):
        windows.append(len(chunk))
        return run_window(ray_, chunk, *args, **kwargs)

    monkeypatch.setattr(ray_engine, "_run_window", counted)
    report = compress_dataset(str(path), str(out), engine="ray", id_field="id", batch_size=4,
                              concurrency=2, ray_window=16, progress=False, **OPTIONS)
    rows = read_out(out)
    ids = [r.get("id") for r in rows]
    print(f"ray resume: {report.skipped_resumed} done before the interruption, "
          f"{report.processed} after, {report.records_in} in, {report.records_out} out, "
          f"{len(ids) - len(set(ids))} duplicates")
    assert report.skipped_resumed == 12
    assert windows == [16, 9]
    assert report.skipped_resumed + report.processed == report.records_in
    assert report.records_in == report.records_out == len(rows) == len(set(ids))
    assert rows == local


def test_ray_score_task_matches_local(ray_local, corpus, tmp_path):
    path, statuses, _ = corpus
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count: the same arithmetic
    try:
        compress_dataset(str(path), str(tmp_path / "local.jsonl"), task="score", id_field="id",
                         batch_size=8, progress=False, max_chars=10_000)
    finally:
        torch.set_num_threads(threads)
    report = compress_dataset(str(path), str(tmp_path / "ray.jsonl"), engine="ray",
                              task="score", id_field="id", batch_size=8, concurrency=2,
                              progress=False, max_chars=10_000)
    local, rows = read_out(tmp_path / "local.jsonl"), read_out(tmp_path / "ray.jsonl")
    assert report.records_in == report.records_out == len(rows) == len(statuses)
    assert [r.get("id") for r in rows] == [r.get("id") for r in local]
    for a, b in zip(rows, local, strict=True):
        assert a["status"] == b["status"] and a["tokens"] == b["tokens"]
        if a["status"] == "ok":
            assert a["surprisal_mean"] == pytest.approx(b["surprisal_mean"], rel=1e-6)
