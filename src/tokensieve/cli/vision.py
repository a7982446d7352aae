"""``tokensieve vision IMAGE...``: reduce the patch tokens of images on a vision model."""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK, fraction


def run(args: argparse.Namespace) -> int:
    from ..vision.images import reduce_images

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


def add(sub) -> None:
    v = sub.add_parser("vision", help="reduce the patch tokens of images on a vision model")
    v.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    v.add_argument("--method", default="default", help="vision method, e.g. default, tome, "
                   "evit, 'dart:pivots=4' (see the README)")
    vb = v.add_mutually_exclusive_group()
    vb.add_argument("--keep", type=fraction, metavar="FRACTION",
                    help="fraction of patch tokens to keep, in (0, 1] (default 0.5)")
    vb.add_argument("--count", type=int, help="patch tokens to keep")
    v.add_argument("--at", type=int, default=None, help="block after which to reduce")
    v.add_argument("--model", default="default", help="'default' (DINOv2-S/14) or a local "
                   "Hugging Face folder")
    v.add_argument("--device", default="cpu")
    v.add_argument("--json", action="store_true", help="print typed results as JSON")
    v.set_defaults(func=run)
