"""Command line: ``tokensieve compress``, ``compress-dataset``, ``vision``, ``inspect``,
``vlm``, ``train``, ``text-classifier``, ``bench``, ``serve``, ``models``; one module per verb
(``cli/<verb>.py``, the inspectors in ``cli/inspect/``), each adding its sub-parser and
running it. The CLI is the top layer: it imports the library, never the other way; a verb
imports what it runs only when it runs.

Exit codes: 0 ok, 2 usage error (bad option, missing file), 1 runtime error. Errors are
one line on stderr; set TOKENSIEVE_DEBUG=1 for a traceback."""

from __future__ import annotations

import argparse
import os
import sys

# Spinning OpenMP threads steal the CPU from other processes (a benchmark's subprocesses,
# parallel jobs); must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from ..errors import TokensieveError, UsageError  # noqa: E402
from . import (  # noqa: E402
    bench,
    compress,
    compress_dataset,
    inspect,
    models,
    serve,
    text_classifier,
    train,
    vision,
    vlm,
)
from .common import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, Parser  # noqa: E402
from .reader import read_input  # noqa: E402
from .serve import SERVE_FLAGS, serve_config  # noqa: E402

__all__ = ["EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "SERVE_FLAGS", "build_parser", "main",
           "read_input", "serve_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tokensieve", description="Keep the informative tokens, drop the rest.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for verb in (compress, compress_dataset, vision, vlm, inspect, train, text_classifier, bench,
                 serve, models):
        verb.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = vlm.route(list(sys.argv[1:] if argv is None else argv))
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
