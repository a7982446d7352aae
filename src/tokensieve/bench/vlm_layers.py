"""Where in the language model does the small VLM look at the part of the image a question
names? Per decoder layer, the share of the prompt's attention to the visual tokens that falls
on the grid cell the question is about ("What is in the top-left corner?": that corner;
"Which corner shows a ship?": the ship's corner), against 25% for attention spread evenly.

This chooses the layer of a question-aware inside-stage method (``fastv`` reads the last
token's attention at layer k): a layer where the share is low cannot tell the asked corner
from the others, whatever the method does with it.

    tokensieve bench vlm-layers --split dev --grids 40 --out benchmarks/results/vlm-layers
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import vlm_data
from .vlm_eval import inputs_for

QTYPES = ("corner_what", "corner_which")
QUERIES = ("last", "text")


def cell_masks(side: int) -> torch.Tensor:
    """(4, side * side) bool: the raster-order patches of each 2x2 cell (row-major cells,
    as :data:`vlm_data.CORNERS`)."""
    if side % 2:
        raise ValueError(f"a 2x2 grid needs an even patch side, got {side}")
    half = side // 2
    grid = torch.zeros(4, side, side, dtype=torch.bool)
    for c in range(4):
        r0, c0 = (c // 2) * half, (c % 2) * half
        grid[c, r0:r0 + half, c0:c0 + half] = True
    return grid.reshape(4, side * side)


def asked_cell(example) -> int:
    """The cell a corner question is about: the one it names, or the one holding the answer."""
    if example.qtype == "corner_what":
        named = example.question.split("the ", 1)[1].rsplit(" corner", 1)[0].replace("-", " ")
        return vlm_data.CORNERS.index(named)
    return vlm_data.CORNERS.index(example.answer)


def shares(weights: torch.Tensor, cell: torch.Tensor, count: int) -> tuple[float, float]:
    """(share of ``weights`` (N,) on ``cell`` (N,) bool, share of the ``count`` largest
    weights that lie in ``cell``)."""
    total = float(weights.sum())
    share = float(weights[cell].sum()) / total if total > 0 else float("nan")
    top = weights.topk(min(count, weights.numel())).indices
    return share, float(cell[top].float().mean())


def profile(model, processor, data, count: int, progress: bool = False) -> dict:
    """Per question type, query and layer: mean attention share on the asked cell and mean
    hit rate of the top-``count`` tokens, over ``data``'s corner questions."""
    image_id = model.config.image_token_id
    n_tokens = int(model.config.image_seq_length)
    masks = cell_masks(int(round(n_tokens ** 0.5)))
    sums: dict = {}
    per_head: dict = {}
    examples = [e for e in data.examples if e.qtype in QTYPES]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")   # attention weights; restored below
    try:
        for ex in tqdm(examples, desc="questions", disable=not progress):
            cell = masks[asked_cell(ex)]
            inputs = inputs_for(processor, [data.image(ex.image)], [ex.question])
            with torch.no_grad():
                out = model(**inputs, output_attentions=True)
            ids = inputs["input_ids"][0]
            visual = (ids == image_id).nonzero().flatten()
            after = torch.arange(int(visual[-1]) + 1, ids.shape[0])
            for layer, heads in enumerate(out.attentions):
                att = heads[0].float().mean(0)
                rows = {"last": att[-1, visual], "text": att[after][:, visual].mean(0)}
                for query, w in rows.items():
                    key = (ex.qtype, query, layer)
                    sums.setdefault(key, []).append(shares(w, cell, count))
                last = heads[0, :, -1][:, visual].float()           # (H, N) per head
                per_head.setdefault((ex.qtype, layer), []).append(
                    (last[:, cell].sum(1) / last.sum(1)).tolist())
    finally:
        model.set_attn_implementation(previous)
    out: dict = {}
    for (qtype, query, layer), vals in sorted(sums.items()):
        v = np.array(vals)
        row = {"layer": layer, "share": float(v[:, 0].mean()),
               "share_se": float(v[:, 0].std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
               "top_hit": float(v[:, 1].mean()), "n": len(v)}
        if query == "last":   # the head whose mean share is highest at this layer
            h = np.array(per_head[(qtype, layer)]).mean(0)
            row.update(best_head=int(h.argmax()), best_head_share=float(h.max()))
        out.setdefault(qtype, {}).setdefault(query, []).append(row)
    return out


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [f"# Where the small VLM looks (split {meta['split']})", "",
           f"{meta['grids']} 2x2 grids; per decoder layer, the share of the prompt's attention "
           "to the visual tokens that falls on the asked cell (25% = spread evenly), ± its "
           f"standard error, and the share of the top {meta['count']} visual tokens inside "
           f"that cell. `last`: the prompt's last token (FastV's query), head mean, and the "
           f"head with the highest mean share; `text`: the mean over the text after the "
           f"image. {meta['threads']} threads, {meta['seconds']:.0f} s.", ""]
    for qtype, by_query in results["layers"].items():
        n = by_query["last"][0]["n"]
        out += [f"## {qtype} ({n} questions)", "",
                "| layer | last: share | last: top in cell | last: best head | text: share | "
                "text: top in cell |", "|---:|---:|---:|---:|---:|---:|"]
        for lo, te in zip(by_query["last"], by_query["text"], strict=True):
            head = (f"{100 * lo['best_head_share']:.0f}% (head {lo['best_head']})"
                    if "best_head" in lo else "–")
            out.append(f"| {lo['layer']} | {100 * lo['share']:.0f}% ± {100 * lo['share_se']:.0f}"
                       f" | {100 * lo['top_hit']:.0f}% | {head} | {100 * te['share']:.0f}% ± "
                       f"{100 * te['share_se']:.0f} | {100 * te['top_hit']:.0f}% |")
        out.append("")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for qtype, by_query in results["layers"].items():
        for query, rows in by_query.items():
            ax.plot([r["layer"] for r in rows], [100 * r["share"] for r in rows],
                    marker="o", ms=3, label=f"{qtype}, {query}")
    ax.axhline(25, color="grey", ls=":", lw=1)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("attention on the asked cell (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(prog="tokensieve bench vlm-layers",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vlm-layers"))
    p.add_argument("--split", choices=("test", "dev"), default="dev")
    p.add_argument("--grids", type=int, default=40, help="2x2 grids (up to 2 corner questions "
                   "each)")
    p.add_argument("--count", type=int, default=32, help="top tokens checked (32 = keep 0.125)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.grids < 1 or a.count < 1:
        p.error("--grids and --count must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    from ..models.llava_small import load_small_vlm, training_record

    a = parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, processor = load_small_vlm()
    data = vlm_data.build(a.split, n_single=0, n_grid=a.grids, seed=a.seed)
    layers = profile(model, processor, data, a.count, progress=sys.stderr.isatty())
    results = {"meta": {"split": a.split, "grids": a.grids, "count": a.count,
                        "threads": a.threads, "seed": a.seed,
                        "seconds": round(time.time() - t0, 1),
                        "torch": torch.__version__, "python": platform.python_version(),
                        "model": training_record()},
               "layers": layers}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (a.out / "report.md").write_text(markdown(results))
    plot(results, a.out / "layers.png")
    print(f"wrote {a.out}/report.md", file=sys.stderr)
    return 0
