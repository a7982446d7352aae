"""``tokensieve compress-dataset IN OUT``: every record of a JSONL / Parquet file, locally or
on Ray, resumable."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_OK, EXIT_RUNTIME
from .compress import add_compress_options, compress_kwargs


def run(args: argparse.Namespace) -> int:
    from ..dataset import compress_dataset

    report = compress_dataset(
        args.input, args.output, engine=args.engine, task=args.task,
        text_field=args.text_field,
        id_field=args.id_field, batch_size=args.batch_size, concurrency=args.concurrency,
        ray_window=args.ray_window, ray_window_bytes=args.ray_window_bytes,
        ray_address=args.ray_address, threads=args.threads, max_chars=args.max_chars,
        column_prefix=args.column_prefix, overwrite=args.overwrite,
        progress=False if args.no_progress else None, **compress_kwargs(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.output}: {report.summary()}")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.records_in != report.records_out:
        print(f"tokensieve: error: records in ({report.records_in}) != records out "
              f"({report.records_out})", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def add(sub) -> None:
    d = sub.add_parser("compress-dataset", help="compress the text field of every record of "
                       "a JSONL or Parquet file (local or Ray; resumable)")
    d.add_argument("input", metavar="IN", help="input .jsonl or .parquet (a path or a URI "
                   "pyarrow reads)")
    d.add_argument("output", metavar="OUT", help="output .jsonl or .parquet: the input columns "
                   "plus compressed_text, original_tokens, compressed_tokens, status, error; "
                   "run again with the same OUT to resume")
    d.add_argument("--engine", default="local", choices=["local", "ray"])
    d.add_argument("--task", default="compress", choices=["compress", "score"],
                   help="compress (default), or score: add tokens, surprisal_total, "
                   "surprisal_mean and perplexity per record instead (of the compress options "
                   "only --model applies)")
    d.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster "
                   "(auto, ray://host:10001); default: start a local Ray")
    d.add_argument("--text-field", default="text", metavar="F", help="column to compress")
    d.add_argument("--id-field", default=None, metavar="F", help="unique record id (checkpoint "
                   "key; default: the record's position)")
    d.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="records per batch and checkpoint part (default 16)")
    d.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="ray: model actors (default: Ray's CPUs / --threads)")
    d.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per model (ray default 1; local: torch's default)")
    d.add_argument("--ray-window", type=int, default=20_000, metavar="N",
                   help="ray: records handed to Ray at a time (bounds the driver's memory; "
                   "default 20000)")
    d.add_argument("--ray-window-bytes", type=int, default=256 << 20, metavar="N",
                   help="ray: and at most about N bytes of records at a time (default 256 MiB)")
    d.add_argument("--max-chars", type=int, default=200_000, metavar="N",
                   help="longer texts get status error:too_large (default 200000)")
    d.add_argument("--column-prefix", default="", metavar="P",
                   help="prefix for the added columns (when the input has one of their names)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace a finished OUT, or discard a run interrupted with other settings")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    add_compress_options(d)
    d.set_defaults(func=run)
