"""``tokensieve text-classifier train``: rebuild the learned keep-classifier of
``compress(method="learned")`` (labels from SmolLM2, a head on MiniLM; see
:mod:`tokensieve.bench.text_classifier`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import EXIT_OK, EXIT_USAGE


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..bench.text_classifier import train
    from ..text.classifier import DATA_DIR

    for name in ("layers", "hidden", "epochs", "questions"):
        if getattr(args, name) < 1:
            print(f"tokensieve: error: --{name} must be >= 1", file=sys.stderr)
            return EXIT_USAGE
    if args.layers > 6:
        print("tokensieve: error: --layers is at most 6 (MiniLM-L6 has 6 layers)",
              file=sys.stderr)
        return EXIT_USAGE
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else DATA_DIR
    record = train(out, layers=args.layers, hidden=args.hidden, epochs=args.epochs,
                   questions=args.questions, seed=args.seed, progress=not args.quiet)
    print(json.dumps(record["valid"], indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def add(sub) -> None:
    c = sub.add_parser("text-classifier", help="train the learned keep-classifier of "
                       "question-free compression (method 'learned')")
    csub = c.add_subparsers(dest="action", required=True)
    t = csub.add_parser("train", help="label passages with SmolLM2, fit the head on MiniLM, "
                        "validate, save (labels are cached; about 20 min on 2 cores)")
    t.add_argument("--layers", type=int, default=3, help="MiniLM layers the head reads "
                   "(default 3; fewer is faster)")
    t.add_argument("--hidden", type=int, default=128, help="the head's hidden width")
    t.add_argument("--epochs", type=int, default=10, help="passes over the labelled tokens "
                   "(default 10: on the held-out sources, more epochs overfit)")
    t.add_argument("--questions", type=int, default=3, help="cloze questions per passage "
                   "whose surprisal reductions are averaged into the labels")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", default=None, help="folder for text_keep_head.safetensors / .json "
                   "(default: the one tokensieve ships, src/tokensieve/models/data)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)
