"""``tokensieve inspect events FILE|-``: score the events of a sequence by surprise; flag
and drop."""

from __future__ import annotations

import argparse
import sys

from ...inspect.events import DEFAULT_DROP_BELOW, DEFAULT_Z, SCORES, events, parse_events
from ..reader import read_input

DESCRIPTION = "score the events of a sequence (log lines, JSONL) by surprise; flag and drop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="events: a text file with one event per line, or JSONL "
                        "with a 'text' field and an optional 'time' (- for standard input)")
    flag = parser.add_mutually_exclusive_group()
    flag.add_argument("--top", type=int, metavar="K", help="flag the K most surprising events")
    flag.add_argument("--z", type=float, metavar="Z", help=f"flag events whose robust z-score "
                      f"exceeds Z (default {DEFAULT_Z})")
    parser.add_argument("--score", default="mean", choices=SCORES,
                        help="rank by mean (nats per token, default) or total surprisal")
    parser.add_argument("--drop-below", type=float, default=DEFAULT_DROP_BELOW, metavar="NATS",
                        help="list events under this mean surprisal as safe to drop "
                        f"(default {DEFAULT_DROP_BELOW})")
    parser.add_argument("--warmup", type=int, default=1, metavar="N",
                        help="the first N events (no history yet) are never flagged (default 1)")
    parser.add_argument("--format", default="auto", choices=["auto", "lines", "jsonl"])
    parser.add_argument("--json", action="store_true", help="print the typed result as JSON")
    parser.add_argument("--png", metavar="OUT.png", help="plot event scores over time")
    parser.add_argument("--model", default="default", help="causal LM: 'default' (embedded "
                        "SmolLM2) or a local folder")
    parser.add_argument("--window", type=int, default=1024, help="tokens per window")
    parser.add_argument("--overlap", type=int, default=256,
                        help="history tokens every window carries at least")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16", "float16", "auto"])


def run(args: argparse.Namespace) -> int:
    data = read_input(args.path)
    name = "standard input" if args.path == "-" else args.path
    records = parse_events(data, name=name, format=args.format)
    result = events(records, args.model, top=args.top, z=args.z, score=args.score,
                    drop_below=args.drop_below, warmup=args.warmup, window=args.window,
                    overlap=args.overlap, device=args.device, dtype=args.dtype)
    if args.png:
        result.to_png(args.png)
    if args.json:
        print(result.to_json())
    else:
        result.print()
        if args.png:
            print(f"wrote {args.png}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
