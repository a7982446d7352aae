"""``tokensieve inspect vocab``: under-trained tokens of a causal LM (``--sticky``: sticky
tokens of a sentence encoder)."""

from __future__ import annotations

import argparse
import json

from ...errors import UsageError
from ...inspect.vocab import vocab

DESCRIPTION = ("find under-trained ('glitch') tokens of a causal LM's vocabulary "
               "(--sticky: tokens that glue sentence embeddings together)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="causal LM: 'default' (SmolLM2), 'gemma3-270m' or a local folder")
    parser.add_argument("--candidates", type=int, default=200,
                        help="how many top-indicator tokens to verify by prompting (default 200)")
    parser.add_argument("--threshold", type=float, default=0.01,
                        help="verified under-trained when the repeat probability stays below "
                             "this (default 0.01)")
    parser.add_argument("--control", type=int, default=0,
                        help="also verify this many random tokens, to see the false alarm rate")
    parser.add_argument("--top", type=int, default=30, help="rows shown in the table")
    parser.add_argument("--sticky", action="store_true",
                        help="instead: sticky tokens of a sentence encoder (--encoder)")
    parser.add_argument("--encoder", default="default",
                        help="with --sticky: 'default' (all-MiniLM-L6-v2) or a local folder")
    parser.add_argument("--screen", type=int, default=2000,
                        help="with --sticky: tokens given the first pass (0 = all)")
    parser.add_argument("--validate", type=int, default=100,
                        help="with --sticky: tokens measured on every sentence pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="float32",
                        help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument("--json", action="store_true", help="print the typed result as JSON")


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise UsageError("--top must be >= 0.")
    if args.sticky:
        from ...inspect.sticky import sticky

        result = sticky(args.encoder, screen=args.screen, validate=args.validate,
                        seed=args.seed, device=args.device, dtype=args.dtype)
    else:
        result = vocab(args.model, candidates=args.candidates, threshold=args.threshold,
                       control=args.control, seed=args.seed, device=args.device,
                       dtype=args.dtype)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(result.table(args.top))
    return 0
