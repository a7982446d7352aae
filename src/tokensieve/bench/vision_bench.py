"""The vision benchmark: every vision method at several budgets on one pretrained backbone,
side by side in one run.

- accuracy of a linear probe trained once on the *unpatched* model's features (CLS token and
  mean patch token), evaluated on features of the reduced model: easy-VQA's coloured shapes
  (the easy-vqa wheel), Fashion-MNIST (Debian's dataset-fashion-mnist) and CIFAR-10 (only
  where the BIG-bench 1.0.0 archive is cached); a dataset whose source is missing is skipped
  with a one-line message;
- feature fidelity (cosine to the unpatched features) on the 20 ImageNet photos of foolbox;
- throughput (images/s) at batch 1 and 32 as ratios to the unpatched model, measured
  interleaved in the same run;
- a picture of which patches each method keeps.

    tokensieve bench vision --quick
    tokensieve bench vision --out benchmarks/results/vision
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import vision
from ..errors import TokensieveError
from ..vision.backbone import load_vision_model, vision_preprocessing
from ..vision.images import pooled_features
from .probe import train_probe
from .vision_data import cifar10, easy_vqa, fashion_mnist, imagenet_photos, to_pixel_values
from .vision_report import write_report

KEEPS = (0.75, 0.5, 0.25, 0.1)
METHODS = ("default",) + tuple(m for m in vision.METHODS if m != vision.DEFAULT_METHOD)
DATASETS = {"easy_vqa": easy_vqa, "fashion_mnist": fashion_mnist, "cifar10": cifar10}


def available_datasets(names: list[str], seed: int = 0) -> list[str]:
    """The datasets of ``names`` whose source can be had; each missing one is reported in
    one line on stderr (what to install) and left out."""
    ok = []
    for name in names:
        try:
            DATASETS[name]("train", seed=seed)
        except TokensieveError as exc:
            print(f"tokensieve: skipping dataset {name}: {exc}", file=sys.stderr, flush=True)
            continue
        ok.append(name)
    return ok


def _at(spec: str | None):
    if spec in (None, "", "default"):
        return None
    parts = [int(s) for s in str(spec).split(",")]
    return parts[0] if len(parts) == 1 else parts


def run_features(model, pixels: torch.Tensor, method: str | None, keep: float,
                 at=None, batch: int = 32) -> tuple[torch.Tensor, float]:
    """Pooled features (CLS token ⊕ size-weighted mean patch token, after the final norm)
    and the fraction of token-layers computed (a FLOPs proxy)."""
    feats, work = [], []
    n_layers = model.config.num_hidden_layers
    with torch.inference_mode():
        starts = range(0, len(pixels), batch)
        for start in tqdm(starts, desc="features", leave=False, delay=5, disable=len(starts) < 8):
            x = pixels[start:start + batch]
            p = model.config.patch_size
            grid = (x.shape[-2] // p) * (x.shape[-1] // p)
            if method is None:
                out = model(pixel_values=x).last_hidden_state
                sizes, prefix = None, out.shape[1] - grid
                work.append(1.0)
            else:
                with vision.reduce(model, method, keep=keep, at=at) as r:
                    out = model(pixel_values=x).last_hidden_state
                sizes, prefix = r.last.sizes, r.last.prefix
                work.append(_token_layers(r, n_layers) / (n_layers * (grid + prefix)))
            feats.append(pooled_features(out, prefix, sizes))
    return torch.cat(feats), float(np.mean(work))


def _token_layers(r: vision.Reducer, n_layers: int) -> int:
    """Sum over blocks of the tokens each block processed."""
    stages, counts = r.stages, r.last.tokens
    total, current, k = 0, counts[0], 0
    for layer in range(n_layers):
        total += current
        if k < len(stages) and layer == stages[k] and k + 1 < len(counts):
            current = counts[k + 1]
            k += 1
    return total


def _probe_split(ds, n_probe: int, n_eval: int, split: str, seed: int):
    """(probe images, evaluation images) per class. ``split="dev"`` takes both from the
    probe-train part (disjoint), used to choose defaults; ``"test"`` evaluates on the held-out
    part."""
    train = ds("train", seed=seed)
    rng = np.random.default_rng(seed)
    probe_idx, dev_idx = [], []
    for c in np.unique(train.labels):
        idx = rng.permutation(np.flatnonzero(train.labels == c))
        k = min(n_probe, max(1, len(idx) - n_eval)) if split == "dev" else n_probe
        probe_idx.append(idx[:k])  # dev: a small class keeps n_eval images to evaluate on
        dev_idx.append(idx[k:k + n_eval])
    probe = train.subset(np.sort(np.concatenate(probe_idx)), f"{train.name}[probe]")
    if split == "dev":
        return probe, train.subset(np.sort(np.concatenate(dev_idx)), f"{train.name}[dev]")
    return probe, ds("eval", seed=seed).per_class(n_eval, seed=seed)


def _cached(path: Path, compute, *args):
    if path.exists():
        return torch.load(path)
    value = compute(*args)
    torch.save(value, path)
    return value


def accuracy_rows(model, prep, args, out: Path) -> list[dict]:
    rows = []
    cache = out / "features"
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        probe_set, eval_set = _probe_split(DATASETS[name], args.probe_per_class,
                                           args.eval_per_class, args.split, args.seed)
        def px(s):
            return to_pixel_values(s.images, args.image_size, prep.mean, prep.std)

        tr, _ = _cached(cache / f"{name}_probe_full.pt", run_features, model, px(probe_set),
                        None, 1.0)
        probe = train_probe(tr, torch.as_tensor(probe_set.labels))
        ev_pixels = px(eval_set)
        labels = torch.as_tensor(eval_set.labels)
        full, _ = _cached(cache / f"{name}_{args.split}_full.pt", run_features, model,
                          ev_pixels, None, 1.0)
        ok_full = (probe.predict(full) == labels).float()
        rows.append(dict(dataset=name, method="full", keep=1.0, at=None,
                         accuracy=ok_full.mean().item(), work=1.0, n=len(labels),
                         sem_vs_full=0.0, cos=1.0))
        cells = [(m, k, a) for k in args.keeps for m in args.methods for a in args.at]
        for method, keep, at in tqdm(cells, desc=f"{name} ({len(labels)} images)"):
            key = f"{name}_{args.split}_{method}_{keep}_{at}".replace(":", "-")
            feats, work = _cached(cache / f"{key}.pt", run_features, model, ev_pixels, method,
                                  keep, _at(at))
            ok = (probe.predict(feats) == labels).float()
            diff = ok - ok_full
            cos = torch.nn.functional.cosine_similarity(feats, full).mean().item()
            rows.append(dict(dataset=name, method=method, keep=keep, at=at,
                             accuracy=ok.mean().item(), work=work, n=len(labels),
                             sem_vs_full=(diff.std() / len(diff) ** 0.5).item(), cos=cos))
    return rows


def fidelity_rows(model, prep, args) -> list[dict]:
    photos = imagenet_photos()
    pixels = to_pixel_values(photos.images, args.photo_size, prep.mean, prep.std)
    full, _ = run_features(model, pixels, None, 1.0, batch=4)
    rows = []
    cells = [(m, k) for k in args.photo_keeps for m in args.methods]
    for method, keep in tqdm(cells, desc=f"photos at {args.photo_size}px"):
        feats, work = run_features(model, pixels, method, keep, batch=4)
        c = feats.shape[1] // 2
        cos_cls = torch.nn.functional.cosine_similarity(feats[:, :c], full[:, :c])
        cos_all = torch.nn.functional.cosine_similarity(feats, full)
        rows.append(dict(method=method, keep=keep, cos_cls=cos_cls.mean().item(),
                         cos_cls_min=cos_cls.min().item(), cos=cos_all.mean().item(),
                         work=work, n=len(photos)))
    return rows


def throughput_rows(model, prep, args) -> list[dict]:
    ds = DATASETS[args.datasets[0]]("eval", seed=args.seed)
    images = to_pixel_values(ds.images[:32], prep.image_size, prep.mean, prep.std)
    cells = [(None, 1.0)] + [(m, 0.5) for m in args.methods] + \
        [("default", k) for k in args.keeps if k != 0.5]
    rows = []
    for batch in (1, 32):
        x = images[:batch]
        times: dict[tuple, list[float]] = {c: [] for c in cells}

        def once(cell, x):
            method, keep = cell
            with torch.inference_mode():
                if method is None:
                    model(pixel_values=x)
                else:
                    with vision.reduce(model, method, keep=keep):
                        model(pixel_values=x)

        for cell in cells:  # warm up
            once(cell, x)
        reps = args.reps if batch > 1 else args.reps * 3
        for _ in tqdm(range(reps), desc=f"throughput batch {batch}"):
            for cell in cells:  # interleaved: drift hits every cell alike
                t = time.perf_counter()
                once(cell, x)
                times[cell].append(time.perf_counter() - t)
        base = statistics.median(times[(None, 1.0)])
        for (method, keep), ts in times.items():
            rows.append(dict(batch=batch, method=method or "full", keep=keep,
                             speedup=base / statistics.median(ts),
                             images_per_s=batch / statistics.median(ts)))
    return rows


def parse(argv):
    p = argparse.ArgumentParser(prog="tokensieve bench vision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/vision")
    p.add_argument("--model", default="default")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--keeps", nargs="+", type=float, default=list(KEEPS))
    p.add_argument("--at", nargs="+", default=["default"],
                   help="block(s) to reduce after, e.g. 2 or 1,5 (several values: a sweep)")
    p.add_argument("--split", choices=["test", "dev"], default="test")
    p.add_argument("--probe-per-class", type=int, default=100)
    p.add_argument("--eval-per-class", type=int, default=30)
    p.add_argument("--image-size", type=int, default=168,
                   help="input size for the classification sets (multiple of 14)")
    p.add_argument("--photo-size", type=int, default=518)
    p.add_argument("--photo-keeps", nargs="+", type=float, default=[0.5, 0.25])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "fidelity", "speed"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run: easy-VQA at 112 px, 2 methods, 2 budgets, 6 + 4 "
                   "images per class")
    args = p.parse_args(argv)
    if args.quick:
        args.methods, args.keeps, args.image_size = ["default", "random"], [0.5, 0.25], 112
        args.probe_per_class, args.eval_per_class, args.reps = 6, 4, 1
        args.photo_keeps, args.photo_size, args.datasets = [0.5], 224, ["easy_vqa"]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_vision_model(args.model)
    prep = vision_preprocessing(args.model)
    t0 = time.perf_counter()
    results = {"meta": dict(model=args.model, image_size=args.image_size,
                            photo_size=args.photo_size, split=args.split,
                            probe_per_class=args.probe_per_class,
                            eval_per_class=args.eval_per_class, seed=args.seed,
                            default_method=vision.DEFAULT_METHOD,
                            default_at=vision.reduce(model, keep=0.5).stages,
                            threads=args.threads, torch=torch.__version__,
                            machine=platform.machine(), cpus=os.cpu_count())}
    previous = out / "results.json"
    if args.skip and previous.exists():  # rerun some sections, keep the others' results
        old = json.loads(previous.read_text())
        results.update({k: v for k, v in old.items() if k in args.skip})
        results["meta"]["kept_from_earlier_run"] = sorted(k for k in old if k in args.skip)
    if "accuracy" not in args.skip or "speed" not in args.skip:
        args.datasets = available_datasets(args.datasets, args.seed)
        if not args.datasets:
            raise SystemExit("tokensieve bench vision: none of the datasets can be read (see "
                             "the messages above)")
        results["meta"]["datasets"] = args.datasets
    if "accuracy" not in args.skip:
        results["accuracy"] = accuracy_rows(model, prep, args, out)
    if "fidelity" not in args.skip:
        results["fidelity"] = fidelity_rows(model, prep, args)
    if "speed" not in args.skip:
        results["speed"] = throughput_rows(model, prep, args)
    results["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    files = write_report(results, model, prep, out)
    print(f"wrote {out / 'results.json'}, " + ", ".join(str(f) for f in files))
    return 0
