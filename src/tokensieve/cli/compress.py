"""``tokensieve compress FILE|-``: compress a prompt; its options are shared with
``compress-dataset``."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_OK, fraction
from .reader import read_input


def explain(result, original: str) -> None:
    """Print the input with every unit coloured by its score rank: red = most informative,
    blue = least; dropped units dimmed and struck through."""
    import numpy as np
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    units = result.scores
    if not units or result.format == "json":
        console.print(result.text, markup=False)
        return
    scores = np.array([u.score for u in units])
    rank = np.argsort(np.argsort(scores, kind="stable"), kind="stable") / max(1, len(units) - 1)
    out, pos = Text(), 0
    for u, q in zip(units, rank, strict=True):
        out.append(original[pos : u.start])
        r, b = int(255 * q), int(255 * (1 - q))
        out.append(u.text, style=f"rgb({r},60,{b})" if u.kept else "dim strike")
        pos = u.end
    out.append(original[pos:])
    console.print(out)
    console.print(f"{result.original_tokens} -> {result.compressed_tokens} tokens "
                  f"(target {result.target_tokens}); red = informative, struck = dropped",
                  style="dim", markup=False)


def run(args: argparse.Namespace) -> int:
    from ..text import compress

    text = read_input(args.path)
    result = compress(text, **compress_kwargs(args))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    elif args.explain:
        explain(result, text)
    else:
        sys.stdout.write(result.text + ("" if result.text.endswith("\n") else "\n"))
    sys.stdout.flush()
    if args.stats:
        print(f"tokens: {result.original_tokens} -> {result.compressed_tokens} "
              f"(target {result.target_tokens}, {result.kept_fraction:.0%} kept) in "
              f"{result.timings.get('total', 0):.2f}s", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def add_compress_options(c: argparse.ArgumentParser) -> None:
    """The options of :func:`tokensieve.compress` (compress and compress-dataset share them;
    :func:`compress_kwargs` turns them back into keyword arguments)."""
    from ..text.compressor import FORMATS, GRANULARITIES, METHODS

    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--keep", type=fraction, metavar="FRACTION",
                        help="fraction of tokens to keep, in (0, 1] (default 0.5)")
    budget.add_argument("--ratio", type=fraction, help=argparse.SUPPRESS)  # old --keep
    budget.add_argument("--target-tokens", type=int, help="keep at most this many tokens")
    c.add_argument("--question", help="question the prompt must still answer")
    c.add_argument("--method", default="default", choices=METHODS, help="scorer (default: "
                   "coarse-to-fine, question-aware when --question is given)")
    c.add_argument("--granularity", default="auto", choices=GRANULARITIES)
    c.add_argument("--finest", default=None, choices=["sentence", "word"],
                   help="the finest level --granularity auto goes down to (default: per "
                   "method; with a question the default stops at whole sentences)")
    c.add_argument("--format", default="text", choices=FORMATS)
    c.add_argument("--protect", action="append", default=[], metavar="REGEX",
                   help="keep every match of REGEX byte for byte (repeatable)")
    c.add_argument("--keep-text", action="append", default=[], metavar="TEXT",
                   help="keep every occurrence of TEXT byte for byte (repeatable)")
    c.add_argument("--keep-numbers", action="store_true",
                   help="never cut a number: each number or ID (12.5, 2024-01-15, "
                   "Z9K6-4842) with its scale word ($48.2 million) is kept whole or dropped "
                   r"whole (to keep every number: --protect '[-+]?\d+(?:[.,:/-]\d+)*%%?')")
    c.add_argument("--keep-names", action="store_true",
                   help="never cut a name: each run of 2-6 capitalised words (Margaret "
                   "Okonkwo) is kept whole or dropped whole")
    c.add_argument("--allow-over-budget", action="store_true",
                   help="if protected text alone exceeds the budget, keep it and report")
    c.add_argument("--model", default="default", help="scoring LM: 'default' or a local folder")
    c.add_argument("--tokenizer", default=None, help="count the budget with this model's "
                   "tokenizer (default: the scoring model's)")
    c.add_argument("--seed", type=int, default=0)


def compress_kwargs(args: argparse.Namespace) -> dict:
    return {
        "keep": args.keep if args.keep is not None else args.ratio,
        "target_tokens": args.target_tokens,
        "question": args.question,
        "method": args.method,
        "granularity": args.granularity,
        "finest": args.finest,
        "protect": args.protect,
        "keep_text": args.keep_text,
        "keep_numbers": args.keep_numbers,
        "keep_names": args.keep_names,
        "format": args.format,
        "tokenizer": args.tokenizer,
        "model": args.model,
        "seed": args.seed,
        "allow_over_budget": args.allow_over_budget,
    }


def add(sub) -> None:
    c = sub.add_parser("compress", help="compress a prompt (file or - for stdin)")
    c.add_argument("path", help="text file to compress, or - for standard input")
    add_compress_options(c)
    out = c.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the full typed result as JSON")
    out.add_argument("--explain", action="store_true", help="show every unit coloured by score")
    c.add_argument("--stats", action="store_true", help="print token counts to stderr")
    c.set_defaults(func=run)
