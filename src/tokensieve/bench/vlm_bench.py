"""The VLM benchmark: every visual-token method at several budgets on the project's small VLM
(DINOv2-S + trained projector + SmolLM2-135M), side by side in one run.

- accuracy per question type (single images; 2x2 grids: what is in a corner, which corner
  shows X, how many are clothes / shoes / shapes) as % of the unpruned model, with the paired
  standard error of the difference, on a split of source images the projector never saw;
- prefill and end-to-end (generate) time as ratios to the unpruned model, at batch 1 and 8,
  measured interleaved in the same run; KV-cache bytes after the prefill;
- a picture of the tokens each method keeps on a few grids.

    tokensieve bench vlm --quick
    tokensieve bench vlm --split dev --out benchmarks/results/vlm-dev     # choose the default
    tokensieve bench vlm --out benchmarks/results/vlm                     # the report
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import vlm
from ..errors import TokensieveError, UsageError
from . import vlm_data, vlm_eval
from .vlm_report import write_report

KEEPS = (0.25, 0.125, 0.0625)
BEFORE = ("visionzip", "vtc-cls", "hiprune", "dart", "todre", "zeroth", "visiondrop", "mmtok",
          "recover", "probe", "learned", "random", "grid")
INSIDE = ("fastv", "transprune", "visiondrop", "random")
QUICK_BEFORE = ("visionzip", "todre", "mmtok", "learned", "random")
QUICK_INSIDE = ("fastv",)


def configs(before, inside, keeps, layers) -> list[dict]:
    """Every (stage, method, keep) cell of the run, the unpruned model first; inside methods
    once per layer in ``layers`` (an int or a list)."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    out = [{"name": "unpruned", "stage": None, "method": None, "keep": 1.0, "layer": None}]
    for keep in keeps:
        out += [{"name": f"{m}", "stage": "before", "method": m, "keep": keep, "layer": None}
                for m in before]
        out += [{"name": f"{m}@L{layer}", "stage": "inside", "method": m, "keep": keep,
                 "layer": layer} for layer in layers for m in inside]
    return out


def pruning(model, cfg: dict):
    """The context a cell runs in: nothing for the unpruned model."""
    if cfg["stage"] is None:
        return _Nothing()
    return vlm.prune(model, cfg["method"], keep=cfg["keep"], stage=cfg["stage"],
                     layer=cfg["layer"])


class _Nothing:
    last: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def answers(model, processor, data, cfg: dict, batch: int, progress: bool) -> tuple[list, list]:
    """Predicted answers for every question of ``data`` under ``cfg``, and per question the
    kept token indices of its image (``None`` unpruned)."""
    preds, kept = [], []
    examples = data.examples
    for start in tqdm(range(0, len(examples), batch), desc=cfg["name"], leave=False,
                      disable=not progress):
        chunk = examples[start:start + batch]
        with pruning(model, cfg) as r:
            preds += vlm_eval.answer(model, processor, data.images([e.image for e in chunk]),
                                     [e.question for e in chunk])
        kept += [rec.kept.tolist() for rec in r.last] if r.last else [None] * len(chunk)
    return preds, kept


def correct(data, preds: list[str]) -> np.ndarray:
    return np.array([vlm_data.normalise_answer(p) == e.answer
                     for e, p in zip(data.examples, preds, strict=True)], dtype=float)


def relative(base: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(accuracy / unpruned accuracy, its paired standard error), in %."""
    if len(base) == 0 or base.mean() == 0:
        return float("nan"), float("nan")
    d = got - base
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return 100 * got.mean() / base.mean(), 100 * se / base.mean()


def kv_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values) if t is not None)


@torch.no_grad()
def timings(model, processor, data, cells: list[dict], batch: int, reps: int,
            new_tokens: int) -> dict:
    """Median prefill and generate seconds per cell at ``batch``, interleaved (every rep
    runs every cell once, in a rotated order), plus the KV bytes after the prefill."""
    idx = list(range(min(batch, len(data.examples))))
    while len(idx) < batch:
        idx.append(idx[len(idx) % max(1, len(data.examples))])
    ex = [data.examples[i] for i in idx]
    inputs = vlm_eval.inputs_for(processor, data.images([e.image for e in ex]),
                                 [e.question for e in ex])
    pad = processor.tokenizer.pad_token_id
    pre: dict[str, list[float]] = {c["key"]: [] for c in cells}
    gen: dict[str, list[float]] = {c["key"]: [] for c in cells}
    kv: dict[str, int] = {}
    for rep in range(reps + 1):            # rep 0 warms up and is not counted
        order = cells[rep % len(cells):] + cells[:rep % len(cells)]
        for cfg in order:
            with pruning(model, cfg):
                t0 = time.perf_counter()
                out = model(**inputs, use_cache=True, logits_to_keep=1)
                t1 = time.perf_counter()
                model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=pad)
                t2 = time.perf_counter()
            if rep:
                pre[cfg["key"]].append(t1 - t0)
                gen[cfg["key"]].append(t2 - t1)
            kv[cfg["key"]] = kv_bytes(out.past_key_values)
    return {k: {"prefill_s": statistics.median(pre[k]), "generate_s": statistics.median(gen[k]),
                "kv_bytes": kv[k]} for k in pre}


def parse(argv):
    p = argparse.ArgumentParser(prog="tokensieve bench vlm", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vlm"))
    p.add_argument("--split", choices=("test", "dev"), default="test")
    p.add_argument("--single", type=int, default=120, help="single-image questions")
    p.add_argument("--grids", type=int, default=120, help="2x2 grids (3 questions each)")
    p.add_argument("--before", nargs="*", default=list(BEFORE), help="methods before the LLM")
    p.add_argument("--inside", nargs="*", default=list(INSIDE), help="methods inside the LLM")
    p.add_argument("--keeps", type=float, nargs="+", default=list(KEEPS))
    p.add_argument("--layer", type=int, nargs="+", default=[2],
                   help="the inside stage's layer (several: each inside method at each)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--speed-methods", nargs="*",
                   default=[vlm.DEFAULT_METHOD, "visionzip", "random"],
                   help="methods timed (before stage) besides the unpruned model (default: "
                   "the default method, visionzip, random)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--pictures", type=int, default=3, help="grids drawn with their kept tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="rewrite report.md and the plots from OUT/results.json (no run)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 12 + 8 images, 4 + 1 methods, keep 0.25 / 0.125")
    a = p.parse_args(argv)
    if a.quick:
        a.single, a.grids = 12, 8
        a.before, a.inside, a.keeps = list(QUICK_BEFORE), list(QUICK_INSIDE), [0.25, 0.125]
        a.reps, a.speed_methods, a.pictures = 1, ["random"], 1
    if a.single < 0 or a.grids < 0 or a.single + a.grids == 0:
        p.error("--single and --grids must be >= 0 and not both 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    try:
        return _report_only(a.out) if a.report_only else _run(a)
    except TokensieveError as exc:
        print(f"tokensieve: error: {exc}", file=sys.stderr)
        return 2


def _report_only(out: Path) -> int:
    """The report of an earlier run, from its results.json (the images rebuilt from its
    settings)."""
    path = out / "results.json"
    if not path.is_file():
        raise UsageError(f"{path} does not exist; run the benchmark with --out {out} first.")
    results = json.loads(path.read_text())
    meta = results["meta"]
    data = vlm_data.build(meta["split"], n_single=meta["single"], n_grid=meta["grids"],
                          seed=meta["seed"])
    write_report(results, out, data)
    print(f"wrote {out}/report.md", file=sys.stderr)
    return 0


def _run(a) -> int:
    from ..models.llava_small import load_small_vlm, training_record

    for m in a.before + a.inside:
        vlm.get_method(m)   # unknown names fail before the model loads
    model, processor = load_small_vlm()
    data = vlm_data.build(a.split, n_single=a.single, n_grid=a.grids, seed=a.seed)
    cells = configs(a.before, a.inside, a.keeps, a.layer)
    a.out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty()
    t_start = time.time()
    base_preds, _ = answers(model, processor, data, cells[0], a.batch, progress)
    base = correct(data, base_preds)
    qtypes = [e.qtype for e in data.examples]
    groups = {"all": np.ones(len(qtypes), bool)}
    for q in sorted(set(qtypes)):
        groups[q] = np.array([t == q for t in qtypes])
    groups["corner"] = np.array([t.startswith("corner") for t in qtypes])
    chance = vlm_eval.chance_levels(data.examples)
    rows, pictures = [], {}
    for cfg in tqdm(cells[1:], desc="cells", disable=not progress):
        try:
            preds, kept = answers(model, processor, data, cfg, a.batch, progress)
        except UsageError as exc:   # a method this model cannot run: one line, go on
            print(f"tokensieve: skipping {cfg['name']} @ {cfg['keep']}: {exc}", file=sys.stderr)
            continue
        got = correct(data, preds)
        row = dict(cfg, accuracy={}, relative={}, se={}, correct=got.astype(int).tolist(),
                   question_aware=bool(vlm.get_method(cfg["method"]).question_aware))
        for g, sel in groups.items():
            if sel.any():
                row["accuracy"][g] = float(got[sel].mean())
                row["relative"][g], row["se"][g] = relative(base[sel], got[sel])
        rows.append(row)
        if cfg["stage"] == "before" and cfg["keep"] == min(a.keeps):
            pictures[cfg["name"]] = kept
        print(f"{cfg['name']:>16} keep {cfg['keep']:<7g} all {row['relative']['all']:6.1f}% "
              f"± {row['se']['all']:.1f}", file=sys.stderr, flush=True)
    timed = [dict(cells[0], key="unpruned")]
    for keep in a.keeps:
        timed += [dict(c, key=f"{c['name']}@{keep:g}") for c in cells[1:]
                  if c["stage"] == "before" and c["method"] in a.speed_methods
                  and c["keep"] == keep]
    speed = {}
    for batch in sorted({1, a.batch}):
        speed[batch] = timings(model, processor, data, timed, batch, a.reps, a.new_tokens)
    base_acc = {g: float(base[sel].mean()) for g, sel in groups.items() if sel.any()}
    counts = {g: int(sel.sum()) for g, sel in groups.items()}
    grids = [i for i, lay in enumerate(data.layouts) if len(lay) == 4][:a.pictures]
    meta = {
        "split": a.split, "single": a.single, "grids": a.grids, "questions": len(qtypes),
        "counts": counts, "chance": chance, "unpruned": base_acc, "keeps": a.keeps,
        "qtypes": qtypes, "unpruned_correct": base.astype(int).tolist(),
        "layer": a.layer, "batch": a.batch, "reps": a.reps, "new_tokens": a.new_tokens,
        "threads": a.threads, "seed": a.seed, "seconds": round(time.time() - t_start, 1),
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "model": training_record(),
        "default": vlm.DEFAULT_METHOD, "visual_tokens": int(model.config.image_seq_length)
        if getattr(model.config, "image_seq_length", None) else None,
    }
    first = {g: next(i for i, e in enumerate(data.examples) if e.image == g) for g in grids}
    drawn = [{"image": g, "question": data.examples[i].question,
              "kept": {name: kept[i] for name, kept in pictures.items()}}
             for g, i in first.items()]
    results = {"meta": meta, "rows": rows, "speed": {str(b): v for b, v in speed.items()},
               "pictures": drawn}
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, a.out, data)
    print(f"wrote {a.out}/report.md", file=sys.stderr)
    return 0

