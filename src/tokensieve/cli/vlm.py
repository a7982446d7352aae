"""``tokensieve vlm train|eval``: train the small VLM's projector, measure its accuracy."""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from ..bench.vlm_train import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup=args.warmup, seed=args.seed, threads=args.threads,
                      time_limit=args.time_limit, n_single=args.single, n_grid=args.grids,
                      resume=not args.fresh, autocast=args.autocast,
                      **({"out": args.out} if args.out else {}))
    record = train(cfg, progress=not args.quiet)
    curve = record["loss_curve"]
    summary = {k: record[k] for k in ("steps_done", "finished", "seconds_training",
                                      "seconds_per_step")}
    summary["loss_first"] = curve[0][1] if curve else None
    summary["loss_last"] = curve[-1][1] if curve else None
    summary["out"] = cfg.out
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    import torch

    from ..bench import vlm_data
    from ..bench.vlm_eval import evaluate
    from ..models.llava_small import load_small_vlm

    torch.set_num_threads(args.threads)
    model, processor = load_small_vlm(args.projector)
    data = vlm_data.build(args.split, args.single, args.grids, seed=args.seed)
    result = evaluate(model, processor, data, batch_size=args.batch_size,
                      progress=not args.quiet)
    if args.json:
        print(json.dumps(result.to_dict(predictions=args.predictions), indent=1))
    else:
        print(result.table())
    return EXIT_OK


def add(sub) -> None:
    from .common import Parser

    v = sub.add_parser("vlm", help="the small vision-language model: train, eval")
    vsub = v.add_subparsers(dest="vlm_command", required=True, parser_class=Parser)
    t = vsub.add_parser("train", help="train the small VLM's projector on CPU (resumable)")
    t.add_argument("--steps", type=int, default=3000, help="total optimiser steps (default "
                   "3000); a rerun resumes from the matching checkpoint")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop (with a checkpoint) before this many seconds")
    t.add_argument("--single", type=int, default=3000, help="single-image questions")
    t.add_argument("--grids", type=int, default=3000, help="2x2 grids (up to 3 questions each)")
    t.add_argument("--autocast", choices=["bf16", "none"], default="bf16",
                   help="bfloat16 autocast on CPU (about 2x faster; default) or none")
    t.add_argument("--out", default=None, help="folder for the projector and its record "
                   "(default: the one tokensieve ships, src/tokensieve/models/data)")
    t.add_argument("--fresh", action="store_true", help="ignore a matching checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)
    e = vsub.add_parser("eval", help="accuracy per question type on a split")
    e.add_argument("--projector", default=None, help="projector .safetensors (default: the "
                   "shipped one)")
    e.add_argument("--split", choices=["train", "dev", "test"], default="dev")
    e.add_argument("--single", type=int, default=100)
    e.add_argument("--grids", type=int, default=100)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", action="store_true")
    e.add_argument("--predictions", action="store_true", help="with --json: every answer")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_eval)
