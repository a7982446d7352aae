"""``tokensieve inspect attribute FILE|- -q QUESTION -a ANSWER``: which context sentences
and words an answer depends on."""

from __future__ import annotations

import argparse
import json

from ...inspect.attribute import CHEAP_METHODS, attribute
from ..reader import read_input

DESCRIPTION = "which context sentences and words an answer depends on (leave-one-out)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the context: a UTF-8 text file, or - for standard input")
    parser.add_argument("--question", "-q", required=True, help="the question asked")
    parser.add_argument("--answer", "-a", required=True, help="the answer to attribute")
    parser.add_argument("--model", default="default",
                        help="causal LM: 'default' (SmolLM2), 'gemma3-270m' or a local folder")
    parser.add_argument("--max-forwards", type=int, default=128,
                        help="budget of leave-one-out forwards (default 128)")
    parser.add_argument("--top-sentences", type=int, default=3,
                        help="sentences whose words are scored one by one (default 3)")
    parser.add_argument("--cheap", default="gradnorm", choices=CHEAP_METHODS,
                        help="the one-pass estimate compared with leave-one-out")
    parser.add_argument("--top", type=int, default=10, help="rows shown per table")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="float32",
                        help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument("--json", action="store_true", help="print the typed result as JSON")


def run(args: argparse.Namespace) -> int:
    result = attribute(read_input(args.path), args.question, args.answer, args.model,
                       max_forwards=args.max_forwards, top_sentences=args.top_sentences,
                       cheap=args.cheap, device=args.device, dtype=args.dtype)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(result.table(args.top))
    return 0
