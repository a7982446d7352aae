"""The VLM benchmark's report: a Markdown table per budget, the speed table, a plot of
accuracy against the budget and a picture of the tokens each method keeps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _cell(row: dict, group: str) -> str:
    r, se = row["relative"].get(group), row["se"].get(group)
    if r is None or math.isnan(r):
        return "–"
    return f"{r:.1f} ± {se:.1f}"


def _layers(layer) -> str:
    return str(layer) if isinstance(layer, int) else ", ".join(str(k) for k in layer)


def aware_vs_agnostic(results: dict, keep: float, group: str = "corner") -> list[dict]:
    """At ``keep``, on the questions of ``group``: each question-aware cell against the best
    question-agnostic cell of the same stage and layer (equal compute; chosen by accuracy
    on these questions, so the agnostic side is favoured), the aware one's lead in points
    with the paired standard error of the per-question difference; best lead first. Empty
    without per-question results of both kinds."""
    qtypes = results["meta"].get("qtypes")
    rows = [r for r in results["rows"] if r["keep"] == keep and "correct" in r]
    sel = np.array([group == "all" or q == group or (group == "corner" and
                    q.startswith("corner")) for q in qtypes or []], dtype=bool)
    if not sel.any():
        return []

    def acc(r) -> float:
        return float(np.asarray(r["correct"])[sel].mean())

    out = []
    for r in rows:
        if not r["question_aware"]:
            continue
        peers = [o for o in rows if not o["question_aware"] and o["stage"] == r["stage"]
                 and o.get("layer") == r.get("layer")]
        if not peers:
            continue
        agnostic = max(peers, key=acc)
        d = (np.asarray(r["correct"]) - np.asarray(agnostic["correct"]))[sel].astype(float)
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
        out.append({"aware": r.get("name") or r["method"], "aware_acc": acc(r),
                    "agnostic": agnostic.get("name") or agnostic["method"],
                    "agnostic_acc": acc(agnostic), "lead": 100 * float(d.mean()),
                    "se": 100 * se, "n": int(sel.sum())})
    return sorted(out, key=lambda c: -c["lead"])


def aware_section(results: dict) -> list[str]:
    """The issue's question-awareness check: each aware cell against the best agnostic one
    of its stage on corner questions."""
    lines = []
    for keep in results["meta"]["keeps"]:
        for c in aware_vs_agnostic(results, keep):
            ratio = c["lead"] / c["se"] if c["se"] > 0 else float("nan")
            lines.append(f"| {keep:g} | {c['aware']} | {100 * c['aware_acc']:.1f}% | "
                         f"{c['agnostic']} | {100 * c['agnostic_acc']:.1f}% | "
                         f"{c['lead']:+.1f} ± {c['se']:.1f} | {ratio:.1f} |")
    if not lines:
        return []
    return ["## Question-aware against question-agnostic (corner questions)", "",
            "Each question-aware cell against the best question-agnostic cell of the same "
            "stage and layer at its budget (chosen here, so the agnostic side is favoured), "
            "accuracy on corner questions; lead in points ± the paired standard error of the "
            "per-question difference.", "",
            "| keep | aware | accuracy | best agnostic, same stage | accuracy | lead | "
            "lead / s.e. |",
            "|---:|---|---:|---|---:|---:|---:|", *lines, ""]


def markdown(results: dict) -> str:
    meta, rows = results["meta"], results["rows"]
    groups = [g for g in ("all", "single", "corner", "corner_what", "corner_which", "count")
              if g in meta["unpruned"]]
    out = [f"# VLM benchmark (small VLM, split {meta['split']})", "",
           f"{meta['questions']} questions ({meta['single']} single images, {meta['grids']} "
           f"2x2 grids); {meta['threads']} threads, {meta['seconds']:.0f} s in all; inside "
           f"stage after decoder layer {_layers(meta['layer'])} (`@Lk`).", "",
           "## The unpruned model", "", "| type | n | accuracy | chance |", "|---|---:|---:|---:|"]
    for g in groups:
        out.append(f"| {g} | {meta['counts'][g]} | {100 * meta['unpruned'][g]:.1f}% | "
                   + (f"{100 * meta['chance'][g]:.1f}% |" if g in meta["chance"] else "– |"))
    out += ["", "## Accuracy as % of the unpruned model", "",
            "Cells: accuracy / unpruned accuracy, ± the paired standard error of the "
            "difference (relative).", ""]
    for keep in meta["keeps"]:
        cells = [r for r in rows if r["keep"] == keep]
        if not cells:
            continue
        out += [f"### keep {keep:g}", "", "| method | stage | " + " | ".join(groups) + " |",
                "|---|---|" + "---:|" * len(groups)]
        for r in sorted(cells, key=lambda r: -r["relative"].get("all", 0)):
            out.append(f"| {r.get('name') or r['method']} | {r['stage']} | "
                       + " | ".join(_cell(r, g) for g in groups) + " |")
        out.append("")
    out += aware_section(results)
    out += ["## Speed (ratios to the unpruned model, same run, median of reps)", "",
            "| batch | cell | prefill s | prefill x | generate s | generate x | KV MB |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for batch, cells in results["speed"].items():
        base = cells["unpruned"]
        for key, v in cells.items():
            out.append(f"| {batch} | {key} | {v['prefill_s']:.3f} | "
                       f"{base['prefill_s'] / v['prefill_s']:.2f} | {v['generate_s']:.3f} | "
                       f"{base['generate_s'] / v['generate_s']:.2f} | "
                       f"{v['kv_bytes'] / 2**20:.2f} |")
    return "\n".join(out) + "\n"


def plot_accuracy(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({(r["method"], r["stage"]) for r in results["rows"]})
    for method, stage in names:
        pts = sorted((r["keep"], r["relative"].get("all", float("nan"))) for r in results["rows"]
                     if r["method"] == method and r["stage"] == stage)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle="-" if stage == "before" else "--", label=f"{method} ({stage})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("visual tokens kept (fraction)")
    ax.set_ylabel("accuracy, % of unpruned")
    ax.axhline(100, color="grey", lw=0.5)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dim_dropped(img: np.ndarray, kept: list[int], side: int) -> np.ndarray:
    """``img`` (H, W, C floats) with the patches of the tokens not in ``kept`` (a
    ``side`` x ``side`` token grid in raster order) dimmed to a quarter."""
    mask = np.zeros(side * side)
    mask[kept] = 1
    cell = img.shape[0] // side
    big = np.kron(mask.reshape(side, side), np.ones((cell, cell)))
    full = np.zeros(img.shape[:2])
    full[: big.shape[0], : big.shape[1]] = big
    return img * (0.25 + 0.75 * full[..., None])


def plot_kept(results: dict, data, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pics = [p for p in results["pictures"] if p["kept"]]
    if not pics:
        return
    methods = sorted(pics[0]["kept"])
    side = math.isqrt(results["meta"]["visual_tokens"] or 256)   # the tokens' patch grid
    fig, axes = plt.subplots(len(pics), len(methods) + 1,
                             figsize=(1.6 * (len(methods) + 1), 1.9 * len(pics)), squeeze=False)
    for row, pic in zip(axes, pics, strict=True):
        img = data.image(pic["image"]).astype(float) / 255
        row[0].imshow(img)
        row[0].set_title(pic["question"][:28], fontsize=5)
        for ax, m in zip(row[1:], methods, strict=True):
            ax.imshow(dim_dropped(img, pic["kept"][m], side))
            ax.set_title(m, fontsize=6)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out: Path, data) -> None:
    (out / "report.md").write_text(markdown(results))
    plot_accuracy(results, out / "accuracy.png")
    plot_kept(results, data, out / "kept.png")
