"""The local engine: this process, one batch after another, in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from .records import RecordCompressor


def run_local(entries: Iterator[tuple[dict, dict, str]],
              write: Callable[[list, list[dict[str, Any]]], None],
              compressor: RecordCompressor, *, batch_size: int,
              threads: int | None = None) -> None:
    """Compress ``entries`` (work item, input row, key) in batches of ``batch_size``; each
    batch's results go to ``write`` (one checkpoint part)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    while batch := list(islice(entries, batch_size)):
        write(batch, compressor.batch([item for item, _, _ in batch]))
