"""Compress (or score by surprisal, ``task="score"``) the text field of every record of a
JSONL or Parquet dataset, locally or on Ray, resumably, without losing a record:
:func:`compress_dataset`, ``tokensieve compress-dataset``."""

from .job import ENGINES, DatasetReport, compress_dataset
from .records import DEFAULT_MAX_CHARS, OUTPUT_COLUMNS, TASK_COLUMNS, TASKS

__all__ = ["DEFAULT_MAX_CHARS", "ENGINES", "OUTPUT_COLUMNS", "TASKS", "TASK_COLUMNS",
           "DatasetReport", "compress_dataset"]
