"""``tokensieve inspect surprise FILE|-``: per-token surprisal of a text (terminal, HTML,
PNG or JSON)."""

from __future__ import annotations

import argparse
import sys

from ...errors import UsageError
from ...inspect.surprise import surprise
from ..reader import read_input

DESCRIPTION = "per-token surprisal of a text (terminal, HTML, PNG or JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="text file to score, or - for standard input")
    parser.add_argument("--question", help="also show how much this question lowers each "
                        "word's surprisal")
    parser.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML heat map")
    parser.add_argument("--png", metavar="OUT.png", help="write a PNG of surprisal along the text")
    parser.add_argument("--json", action="store_true", help="print the typed result as JSON")
    parser.add_argument("--view", default="token", choices=["token", "word", "reduction"],
                        help="terminal colouring: per token, per word, or question reduction")
    parser.add_argument("--model", default="default", help="causal LM: 'default' (embedded "
                        "SmolLM2) or a local folder")
    parser.add_argument("--window", type=int, default=1024, help="tokens per window (long texts)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16", "float16", "auto"])


def run(args: argparse.Namespace) -> int:
    text = read_input(args.path)
    if args.view == "reduction" and not args.question:
        raise UsageError("--view reduction needs --question.")
    result = surprise(text, args.model, args.question, window=args.window, device=args.device,
                      dtype=args.dtype)
    if args.html:
        result.to_html(args.html)
    if args.png:
        result.to_png(args.png)
    if args.json:
        print(result.to_json())
    else:
        result.print(args.view)
        for path in (args.html, args.png):
            if path:
                print(f"wrote {path}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
