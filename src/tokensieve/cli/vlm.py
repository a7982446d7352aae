"""``tokensieve vlm IMAGE --question Q``: answer with the small VLM, its visual tokens pruned;
``tokensieve vlm train|eval``: train the small VLM's projector, measure its accuracy;
``tokensieve vlm train-look``: train the look head of the ``learned`` method."""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK, fraction

SUBCOMMANDS = ("train", "eval", "ask", "train-look")


def route(argv: list[str]) -> list[str]:
    """``vlm IMAGE ...`` is ``vlm ask IMAGE ...`` (the subcommands keep their names)."""
    if len(argv) >= 2 and argv[0] == "vlm" and argv[1] not in SUBCOMMANDS + ("-h", "--help"):
        return ["vlm", "ask", *argv[1:]]
    return argv


def _ask(args: argparse.Namespace) -> int:
    import time

    import torch

    from .. import vlm
    from ..bench.vlm_eval import answer
    from ..inputs import decode_text
    from ..models.llava_small import load_small_vlm
    from ..vision.images import load_images

    question = decode_text(args.question, "--question")
    if not question.strip():
        from ..errors import InputError
        raise InputError("--question is empty: ask something about the image.")
    torch.set_num_threads(args.threads)
    images = load_images([args.image])
    vlm.get_method(args.method)          # a bad method name fails before the model loads
    model, processor = load_small_vlm()
    t0 = time.perf_counter()
    with vlm.prune(model, args.method, keep=args.keep, count=args.count, stage=args.stage,
                   layer=args.layer) as r:
        text = answer(model, processor, images, [question], max_new_tokens=args.max_new_tokens)[0]
    seconds = time.perf_counter() - t0
    rec = r.last[0] if r.last else None
    total = rec.tokens if rec else int(model.config.image_seq_length)
    kept = len(rec.kept) if rec else total
    ran = rec.method if rec and rec.method else args.method   # what "default" resolved to
    if args.png:
        _draw(images[0], processor, rec.kept.tolist() if rec else list(range(total)), total,
              args.png)
    if args.json:
        print(json.dumps({"answer": text.strip(), "visual_tokens": total, "kept": kept,
                          "kept_indices": rec.kept.tolist() if rec else None,
                          "method": args.method, "ran": ran, "stage": args.stage,
                          "seconds": round(seconds, 3)}, indent=2))
    else:
        print(text.strip())
        print(f"[{kept} of {total} visual tokens kept ({ran}, {args.stage}), "
              f"{seconds:.2f} s]", file=__import__("sys").stderr)
    return EXIT_OK


def _draw(image, processor, kept: list[int], total: int, path: str) -> None:
    """The image as the model sees it, with the dropped tokens' patches dimmed."""
    import math

    import numpy as np
    from PIL import Image

    from ..bench.vlm_report import dim_dropped

    crop = getattr(processor.image_processor, "crop_size", None) or {}
    size = crop.get("height", 224)
    img = np.asarray(Image.fromarray(image).convert("RGB").resize((size, size))).astype(float)
    out = dim_dropped(img, kept, math.isqrt(total))
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(path)


def _train(args: argparse.Namespace) -> int:
    from ..bench.vlm_train import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup=args.warmup, seed=args.seed, threads=args.threads,
                      time_limit=args.time_limit, n_single=args.single, n_grid=args.grids,
                      resume=not args.fresh, autocast=args.autocast,
                      lora_rank=args.lora_rank, standardize=not args.no_standardize,
                      align_epochs=args.align_epochs, questions=args.questions,
                      init=args.init, align_weight=args.align_weight, read_steps=args.read_steps,
                      stop_after=args.stop_after,
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


def _train_look(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..bench.vlm_look import train_look
    from ..errors import UsageError
    from ..vlm.look_head import DATA_DIR, check_context
    from .common import EXIT_USAGE

    for name in ("single", "grids", "dev_single", "dev_grids", "hidden", "epochs"):
        if getattr(args, name) < (1 if name in ("hidden", "epochs") else 0):
            print(f"tokensieve: error: --{name.replace('_', '-')} is too small", file=sys.stderr)
            return EXIT_USAGE
    if args.single + args.grids < 1 or not 0.0 < args.depth <= 1.0:
        print("tokensieve: error: --single + --grids must be >= 1 and --depth in (0, 1]",
              file=sys.stderr)
        return EXIT_USAGE
    if args.weight_decay < 0:
        print("tokensieve: error: --weight-decay must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_context(args.context)
    except UsageError as e:
        print(f"tokensieve: error: --context: {e}", file=sys.stderr)
        return EXIT_USAGE
    torch.set_num_threads(args.threads)
    model = processor = None
    if args.model:
        from ..vlm.load import load

        model, processor = load(args.model)
    out = args.out or DATA_DIR
    record = train_look(out, model=model, processor=processor, single=args.single,
                        grids=args.grids, dev_single=args.dev_single, dev_grids=args.dev_grids,
                        depth=args.depth, hidden=args.hidden, context=args.context,
                        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                        seed=args.seed, progress=not args.quiet)
    print(json.dumps(record["valid"], indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def add(sub) -> None:
    from .common import Parser

    v = sub.add_parser("vlm", help="answer about an image with the small VLM, its visual "
                       "tokens pruned (tokensieve vlm IMAGE --question Q); train, eval")
    vsub = v.add_subparsers(dest="vlm_command", required=True, parser_class=Parser)
    a = vsub.add_parser("ask", help="answer a question about IMAGE (also: tokensieve vlm IMAGE "
                        "--question Q)")
    a.add_argument("image", help="an image file (PNG, JPEG, ...)")
    a.add_argument("--question", required=True, help="the question to answer")
    a.add_argument("--method", default="default", help="VLM method, e.g. default (learned on "
                   "the small VLM), todre, visionzip, probe (question-aware, slower), "
                   "'dart:pivots=4' (see the README)")
    ab = a.add_mutually_exclusive_group()
    ab.add_argument("--keep", type=fraction, metavar="FRACTION",
                    help="fraction of visual tokens kept, in (0, 1] (default 0.25)")
    ab.add_argument("--count", type=int, help="visual tokens kept")
    a.add_argument("--stage", choices=["before", "inside"], default="before")
    a.add_argument("--layer", type=int, default=None, help="the inside stage's layer "
                   "(default 2)")
    a.add_argument("--png", default=None, metavar="FILE", help="write the image with the "
                   "dropped tokens' patches dimmed")
    a.add_argument("--max-new-tokens", type=int, default=8)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_ask)
    t = vsub.add_parser("train", help="train the small VLM's projector on CPU (resumable)")
    t.add_argument("--steps", type=int, default=200, help="total optimiser steps (default "
                   "200); a rerun resumes from the matching checkpoint. The defaults are the "
                   "shipped model's recipe")
    t.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after "
                   "step N of the --steps schedule (the learning rate still follows --steps), "
                   "e.g. to reproduce a run a time limit stopped")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop (with a checkpoint) before this many seconds")
    t.add_argument("--single", type=int, default=1500, help="single-image questions")
    t.add_argument("--grids", type=int, default=1500, help="2x2 grids (up to 3 questions each)")
    t.add_argument("--autocast", choices=["bf16", "none"], default="bf16",
                   help="bfloat16 autocast on CPU (about 2x faster; default) or none")
    t.add_argument("--lora-rank", type=int, default=8, help="LoRA adapters of this rank on "
                   "the language model's q/v/o projections, merged at load (default 8; 0: "
                   "the projector only)")
    t.add_argument("--align-epochs", type=int, default=2, help="first fit the projector so "
                   "each visual token lands on its cell's word embedding, for this many "
                   "epochs (no language-model forward; default 2, 0: none)")
    t.add_argument("--align-weight", type=float, default=1.0, help="keep the alignment loss "
                   "on during training at this weight (default 1; 0: off), so tokens keep "
                   "naming their cell's place and content")
    t.add_argument("--read-steps", type=int, default=160, help="first teach the language "
                   "model's adapters to read visual tokens for this many steps, on the "
                   "phrase embeddings the alignment aims at instead of projected features "
                   "(no tower, no projector; needs --lora-rank; default 160, 0: none)")
    t.add_argument("--questions", choices=["one", "all"], default="all", help="questions "
                   "per grid: one of each type or all of them (default) (each corner, each "
                   "unique class, each count group; same images)")
    t.add_argument("--init", default=None, metavar="FILE", help="start from this projector "
                   ".safetensors (and its LoRA adapters) instead of a fresh projector")
    t.add_argument("--no-standardize", action="store_true", help="train on the raw tower "
                   "features (default: standardised per dimension, folded in when saved)")
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
    k = vsub.add_parser("train-look", help="train the look head of method 'learned': it "
                        "predicts the attention a deep decoder layer pays to each visual "
                        "token from the question (targets from the model itself; about 30 "
                        "min on 2 cores)")
    k.add_argument("--model", default=None, metavar="FOLDER", help="a local VLM folder "
                   "(default: the small VLM)")
    k.add_argument("--single", type=int, default=300, help="train single-image questions")
    k.add_argument("--grids", type=int, default=300, help="train 2x2 grids (every question)")
    k.add_argument("--dev-single", type=int, default=60)
    k.add_argument("--dev-grids", type=int, default=40)
    k.add_argument("--depth", type=float, default=0.7, help="the decoder layer whose "
                   "attention is learned, as a fraction of the depth (default 0.7: layer 21 "
                   "of the small VLM, where it finds the asked corner)")
    k.add_argument("--hidden", type=int, default=128)
    k.add_argument("--context", type=int, default=0, help="also read each token's CONTEXT x "
                   "CONTEXT neighbourhood (odd, >= 3; default 0: the token alone)")
    k.add_argument("--weight-decay", type=float, default=0.01)
    k.add_argument("--epochs", type=int, default=30)
    k.add_argument("--lr", type=float, default=2e-3)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--threads", type=int, default=2)
    k.add_argument("--out", default=None, help="folder for small_vlm_look_head.safetensors / "
                   ".json (default: the one tokensieve ships, src/tokensieve/models/data)")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=_train_look)
