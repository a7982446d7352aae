"""``tokensieve bench text|kv|vision|vlm|vlm-layers|train|sft ...``: hands the rest of the
line to the benchmark."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    if args.target == "vision":
        from ..bench.vision_bench import main as bench_vision

        return bench_vision(args.rest)
    if args.target == "vlm-layers":
        from ..bench.vlm_layers import main as bench_vlm_layers

        return bench_vlm_layers(args.rest)
    if args.target == "vlm":
        from ..bench.vlm_bench import main as bench_vlm

        return bench_vlm(args.rest)
    if args.target == "sft":
        from ..bench.sft_bench import main as bench_sft

        return bench_sft(args.rest)
    if args.target == "train":
        from ..bench.train_bench import main as bench_train

        return bench_train(args.rest)
    if args.target == "kv":
        from ..bench.kv_bench import main as bench_kv

        return bench_kv(args.rest)
    from ..bench.text_bench import main as bench_text

    return bench_text(args.rest)


def add(sub) -> None:
    b = sub.add_parser("bench", help="run a benchmark (text, kv, vision, vlm, vlm-layers, "
                       "train or sft); see tokensieve bench kv --help", add_help=False)
    b.add_argument("target",
                   choices=["text", "kv", "vision", "vlm", "vlm-layers", "train", "sft"])
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=run)
