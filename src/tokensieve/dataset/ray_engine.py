"""The Ray engine: Ray Data ``map_batches`` with a callable class, so each actor loads the
model once and compresses batch after batch; the driver writes a checkpoint part per block
as results stream back (in input order).

Ray is imported only here (``pip install 'tokensieve[ray]'``). Without an address a local
Ray starts (no dashboard, usage stats off); with one (``auto``, ``ray://host:10001``) the job
runs on that cluster, where every node needs tokensieve and its model cache.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UsageError

# torch threads per actor unless told: one model per core scales best on CPUs
DEFAULT_THREADS = 1


def import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing reaches the network
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("the ray engine needs Ray Data: pip install 'tokensieve[ray]'") from None
    return ray


def actor_env(threads: int) -> dict[str, str]:
    """Environment of every actor: passive OpenMP waits, a fixed thread count, offline."""
    env = {"OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    for name in ("TOKENSIEVE_CACHE", "TOKENSIEVE_DEBUG"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


class CompressorActor:
    """One per Ray actor: loads the model once (warm-up in ``__init__``), then runs the
    task ('compress' or 'score') on each batch (a pyarrow table of work items) into a table
    of results."""

    def __init__(self, options: dict[str, Any], threads: int = DEFAULT_THREADS,
                 task: str = "compress"):
        import pyarrow as pa
        import torch

        from .records import arrow_types, make_worker

        torch.set_num_threads(threads)
        self.worker = make_worker(task, options)
        self.worker.warm_up()
        self.schema = pa.schema([pa.field("pos", pa.int64()),
                                 *(pa.field(role, getattr(pa, kind)())
                                   for role, kind in arrow_types(task).items())])

    def __call__(self, batch):
        import pyarrow as pa

        return pa.Table.from_pylist(self.worker.batch(batch.to_pylist()), schema=self.schema)


def init_ray(address: str | None, num_cpus: int | None = None):
    """Connect to ``address`` or start a local Ray (unless one is already up)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True,
                              "log_to_driver": bool(os.environ.get("TOKENSIEVE_DEBUG")),
                              "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return ray, True


# records (and bytes of records) handed to Ray at a time: bounds the driver's memory on a
# large corpus, whatever the size of its records (the actor pool is started once per window,
# so a window should take minutes, not seconds)
DEFAULT_WINDOW = 20_000
DEFAULT_WINDOW_BYTES = 256 << 20


def approx_bytes(value: Any) -> int:
    """About how many bytes ``value`` (a record's row or work item) holds: the length of its
    strings and bytes, 8 for any other scalar, summed through lists and dicts."""
    if isinstance(value, str | bytes | bytearray):
        return len(value) + 8
    if isinstance(value, dict):
        return sum(approx_bytes(k) + approx_bytes(v) for k, v in value.items()) + 8
    if isinstance(value, list | tuple):
        return sum(approx_bytes(v) for v in value) + 8
    return 8


def windows(entries: Iterator[tuple[dict, dict, str]], records: int, max_bytes: int,
            ) -> Iterator[list[tuple[dict, dict, str]]]:
    """Consecutive chunks of ``entries`` of at most ``records`` entries and at most
    ``max_bytes`` bytes (by :func:`approx_bytes`; a larger entry goes alone)."""
    chunk: list[tuple[dict, dict, str]] = []
    size = 0
    for entry in entries:
        n = approx_bytes(entry[1]) + approx_bytes(entry[0].get("text"))
        if chunk and (len(chunk) >= records or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += n
    if chunk:
        yield chunk


def run_ray(entries: Iterator[tuple[dict, dict, str]],
            write: Callable[[list, list[dict[str, Any]]], None],
            options: dict[str, Any], *, batch_size: int, concurrency: int | None,
            threads: int | None, address: str | None, progress: bool = False,
            window: int = DEFAULT_WINDOW, window_bytes: int = DEFAULT_WINDOW_BYTES,
            task: str = "compress") -> None:
    """Compress ``entries`` on ``concurrency`` actors (default: the CPUs Ray has / threads)
    of ``threads`` torch threads each; ``write`` gets each block's entries and results.
    The entries go to Ray ``window`` records (and at most ``window_bytes`` bytes of them) at
    a time, so the driver holds at most one window of records, whatever the size of the
    corpus or of its records."""
    threads = threads or DEFAULT_THREADS
    window = max(window, batch_size)
    ray, started = init_ray(address)
    try:
        if concurrency is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            concurrency = max(1, cpus // threads)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # parts in input order: streaming merge
        ctx.enable_progress_bars = progress
        ctx.enable_operator_progress_bars = progress
        ctx.print_on_execution_start = False
        if not os.environ.get("TOKENSIEVE_DEBUG"):  # our bar and summary say enough
            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.WARNING)
        for chunk in windows(entries, window, window_bytes):
            _run_window(ray, chunk, write, options, batch_size=batch_size,
                        concurrency=concurrency, threads=threads, task=task)
    finally:
        if started:
            ray.shutdown()


def _run_window(ray, chunk: list[tuple[dict, dict, str]],
                write: Callable[[list, list[dict[str, Any]]], None], options: dict[str, Any],
                *, batch_size: int, concurrency: int, threads: int, task: str) -> None:
    import pyarrow as pa

    by_pos = {item["pos"]: (item, row, key) for item, row, key in chunk}
    table = pa.table({
        "pos": pa.array([it["pos"] for it, _, _ in chunk], pa.int64()),
        "text": pa.array([it["text"] for it, _, _ in chunk], pa.string()),
        "error_kind": pa.array([it["error_kind"] for it, _, _ in chunk], pa.string()),
        "error": pa.array([it["error"] for it, _, _ in chunk], pa.string()),
    })
    blocks = max(1, math.ceil(len(chunk) / batch_size))
    ds = ray.data.from_arrow([table.slice(i * batch_size, batch_size) for i in range(blocks)])
    mapped = ds.map_batches(
        CompressorActor,
        fn_constructor_kwargs={"options": options, "threads": threads, "task": task},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(concurrency, blocks)), num_cpus=threads,
        runtime_env={"env_vars": actor_env(threads)})
    for out in mapped.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        results = out.to_pylist()
        write([by_pos[r["pos"]] for r in results], results)
