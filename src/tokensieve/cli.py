"""Command line: ``tokensieve compress``, ``tokensieve compress-dataset``, ``tokensieve models``.

Exit codes: 0 ok, 2 usage error (bad option, missing file), 1 runtime error. Errors are
one line on stderr; set TOKENSIEVE_DEBUG=1 for a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Spinning OpenMP threads steal the CPU from other processes (a benchmark's subprocesses,
# parallel jobs); must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from .errors import InputError, TokensieveError, UsageError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _read_input(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "standard input"
    else:
        p = Path(path)
        if not p.exists():
            raise UsageError(f"no such file: {path}")
        if p.is_dir():
            raise UsageError(f"{path} is a folder; pass a text file or - for standard input.")
        data = p.read_bytes()
        name = path
    if b"\x00" in data:
        raise InputError(f"{name} contains NUL bytes, so it looks binary; pass a UTF-8 text file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 (byte {exc.start}); convert it to UTF-8, "
                         "e.g. with iconv.") from exc


def _explain(result, original: str) -> None:
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


def _cmd_compress(args: argparse.Namespace) -> int:
    from .text import compress

    text = _read_input(args.path)
    result = compress(text, **_compress_kwargs(args))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    elif args.explain:
        _explain(result, text)
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


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "status", "path")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["status"], row["path"])
    Console().print(table)
    return EXIT_OK


def _cmd_vision(args: argparse.Namespace) -> int:
    from .vision.images import reduce_images

    results = reduce_images(args.images, args.method, keep=args.keep, count=args.count,
                            at=args.at, model=args.model, device=args.device)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return EXIT_OK
    for r in results:
        print(f"{r.path}: {r.patches} -> {r.patches_kept} patch tokens "
              f"({r.patches_kept / r.patches:.0%}, grid {r.grid[0]}x{r.grid[1]}, "
              f"{r.prefix} prefix), feature cosine {r.cosine:.3f} (CLS {r.cosine_cls:.3f}), "
              f"x{r.speedup:.2f} this forward")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.target == "vision":
        from .bench.vision_bench import main as bench_vision

        return bench_vision(args.rest)
    if args.target == "kv":
        from .bench.kv_bench import main as bench_kv

        return bench_kv(args.rest)
    from .bench.text_bench import main as bench_text

    return bench_text(args.rest)


# flags of `tokensieve serve` beyond host / port / upstream / api key: (flag, type, help);
# each sets the ServeConfig field of the same name and overrides its TOKENSIEVE_* variable
SERVE_FLAGS = (
    ("--max-concurrency", int, "model calls at once; the rest queue, then get 503 (default 1)"),
    ("--queue-timeout", float, "seconds a request may wait for a model slot (default 5)"),
    ("--request-timeout", float, "seconds per model call before 504 (default 60)"),
    ("--max-body-bytes", int, "larger requests get 413 (default 2000000)"),
    ("--max-chars", int, "characters of text per request; more get 413 (default 100000)"),
    ("--max-messages", int, "messages per proxy request; more get 413 (default 500)"),
    ("--allowed-hosts", str, "comma-separated Host names served besides --host and loopback"),
    ("--threads", int, "torch threads for the models (default: torch's)"),
    ("--model", str, "scoring model: default, a local HF folder or a cached hub id"),
    ("--device", str, "cpu (default), cuda, cuda:N, mps or auto"),
    ("--proxy-keep", float, "proxy: fraction of tokens kept in long messages (default 0.5)"),
    ("--proxy-min-tokens", int, "proxy: compress messages longer than this (default 512)"),
    ("--proxy-roles", str, "proxy: comma-separated roles compressed (default system,user,tool)"),
    ("--proxy-method", str, "proxy: compression method (default: default)"),
)


def serve_config(args: argparse.Namespace):
    """The deployment's ServeConfig: TOKENSIEVE_* variables, then the flags."""
    from .serve import ServeConfig

    overrides = {"host": args.host, "port": args.port, "upstream": args.upstream,
                 "api_key": args.api_key}
    for flag, _, _ in SERVE_FLAGS:
        name = flag[2:].replace("-", "_")
        value = getattr(args, name)
        if name in ("proxy_roles", "allowed_hosts") and value is not None:
            value = tuple(r.strip() for r in value.split(",") if r.strip())
        overrides[name] = value
    if args.proxy_keep_numbers:
        overrides["proxy_keep_numbers"] = True
    return ServeConfig.from_env(**overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import run
    except ImportError as exc:
        raise UsageError(f"tokensieve serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'tokensieve[serve]'") from None
    run(serve_config(args))
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _fraction(value: str) -> float:
    """--keep FRACTION; a clear word for the old --keep TEXT."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--keep takes the fraction of tokens to keep (e.g. 0.33), got {value!r}; to "
            f"protect a literal string use --keep-text {value!r}") from None


def _add_compress_options(c: argparse.ArgumentParser) -> None:
    """The options of :func:`tokensieve.compress` (compress and compress-dataset share them;
    :func:`_compress_kwargs` turns them back into keyword arguments)."""
    from .text.compressor import FORMATS, GRANULARITIES, METHODS

    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--keep", type=_fraction, metavar="FRACTION",
                        help="fraction of tokens to keep, in (0, 1] (default 0.5)")
    budget.add_argument("--ratio", type=_fraction, help=argparse.SUPPRESS)  # old --keep
    budget.add_argument("--target-tokens", type=int, help="keep at most this many tokens")
    c.add_argument("--question", help="question the prompt must still answer")
    c.add_argument("--method", default="default", choices=METHODS, help="scorer (default: "
                   "coarse-to-fine, question-aware when --question is given)")
    c.add_argument("--granularity", default="auto", choices=GRANULARITIES)
    c.add_argument("--format", default="text", choices=FORMATS)
    c.add_argument("--protect", action="append", default=[], metavar="REGEX",
                   help="keep every match of REGEX byte for byte (repeatable)")
    c.add_argument("--keep-text", action="append", default=[], metavar="TEXT",
                   help="keep every occurrence of TEXT byte for byte (repeatable)")
    c.add_argument("--keep-numbers", action="store_true",
                   help="never cut a number: each number or ID (12.5, 2024-01-15, "
                   "Z9K6-4842) with its scale word ($48.2 million) is kept whole or dropped "
                   r"whole (to keep every number: --protect '[-+]?\d+(?:[.,:/-]\d+)*%%?')")
    c.add_argument("--allow-over-budget", action="store_true",
                   help="if protected text alone exceeds the budget, keep it and report")
    c.add_argument("--model", default="default", help="scoring LM: 'default' or a local folder")
    c.add_argument("--tokenizer", default=None, help="count the budget with this model's "
                   "tokenizer (default: the scoring model's)")
    c.add_argument("--seed", type=int, default=0)


def _compress_kwargs(args: argparse.Namespace) -> dict:
    return {
        "keep": args.keep if args.keep is not None else args.ratio,
        "target_tokens": args.target_tokens,
        "question": args.question,
        "method": args.method,
        "granularity": args.granularity,
        "protect": args.protect,
        "keep_text": args.keep_text,
        "keep_numbers": args.keep_numbers,
        "format": args.format,
        "tokenizer": args.tokenizer,
        "model": args.model,
        "seed": args.seed,
        "allow_over_budget": args.allow_over_budget,
    }


def _cmd_compress_dataset(args: argparse.Namespace) -> int:
    from .dataset import compress_dataset

    report = compress_dataset(
        args.input, args.output, engine=args.engine, task=args.task,
        text_field=args.text_field,
        id_field=args.id_field, batch_size=args.batch_size, concurrency=args.concurrency,
        ray_window=args.ray_window, ray_window_bytes=args.ray_window_bytes,
        ray_address=args.ray_address, threads=args.threads, max_chars=args.max_chars,
        column_prefix=args.column_prefix, overwrite=args.overwrite,
        progress=False if args.no_progress else None, **_compress_kwargs(args))
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tokensieve", description="Keep the informative tokens, drop the rest.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("compress", help="compress a prompt (file or - for stdin)")
    c.add_argument("path", help="text file to compress, or - for standard input")
    _add_compress_options(c)
    out = c.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the full typed result as JSON")
    out.add_argument("--explain", action="store_true", help="show every unit coloured by score")
    c.add_argument("--stats", action="store_true", help="print token counts to stderr")
    c.set_defaults(func=_cmd_compress)
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
    _add_compress_options(d)
    d.set_defaults(func=_cmd_compress_dataset)
    v = sub.add_parser("vision", help="reduce the patch tokens of images on a vision model")
    v.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    v.add_argument("--method", default="default", help="vision method, e.g. default, tome, "
                   "evit, 'dart:pivots=4' (see the README)")
    vb = v.add_mutually_exclusive_group()
    vb.add_argument("--keep", type=_fraction, metavar="FRACTION",
                    help="fraction of patch tokens to keep, in (0, 1] (default 0.5)")
    vb.add_argument("--count", type=int, help="patch tokens to keep")
    v.add_argument("--at", type=int, default=None, help="block after which to reduce")
    v.add_argument("--model", default="default", help="'default' (DINOv2-S/14) or a local "
                   "Hugging Face folder")
    v.add_argument("--device", default="cpu")
    v.add_argument("--json", action="store_true", help="print typed results as JSON")
    v.set_defaults(func=_cmd_vision)
    from .inspect.cli import add_inspect_parser

    add_inspect_parser(sub)
    b = sub.add_parser("bench", help="run a benchmark (text, kv or vision); see tokensieve "
                       "bench kv "
                       "--help", add_help=False)
    b.add_argument("target", choices=["text", "kv", "vision"])
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    s = sub.add_parser("serve", help="HTTP service and OpenAI-compatible compressing proxy "
                       "(flags override TOKENSIEVE_* environment variables)")
    s.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default 8000)")
    s.add_argument("--upstream", default=None, metavar="URL",
                   help="OpenAI-compatible API the proxy forwards to, e.g. "
                   "https://api.openai.com/v1")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="clients must send this key (Bearer or X-API-Key)")
    for flag, kind, text in SERVE_FLAGS:
        s.add_argument(flag, type=kind, default=None, help=text,
                       metavar={int: "N", float: "X", str: "NAME"}[kind])
    s.add_argument("--proxy-keep-numbers", action="store_true",
                   help="proxy: never cut a number or ID in compressed messages (kept "
                   "whole or dropped whole)")
    s.set_defaults(func=_cmd_serve)
    m = sub.add_parser("models", help="list the installed models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"tokensieve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TokensieveError as exc:
        print(f"tokensieve: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("tokensieve: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line, traceback on request
        if os.environ.get("TOKENSIEVE_DEBUG"):
            raise
        print(f"tokensieve: internal error: {type(exc).__name__}: {exc} "
              "(set TOKENSIEVE_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
