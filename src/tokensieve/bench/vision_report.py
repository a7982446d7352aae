"""Markdown table, accuracy-vs-budget plot and a picture of kept patches for the vision
benchmark."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .. import vision


def _pct(v, digits=1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# Vision benchmark ({meta['model']} backbone, split {meta['split']})", "",
             f"Default method: `{meta['default_method']}`, reducing after block(s) "
             f"{meta['default_at']}. Classification at {meta['image_size']} px, "
             f"{meta['probe_per_class']} probe images and {meta['eval_per_class']} evaluation "
             f"images per class; photos at {meta['photo_size']} px; {meta['threads']} threads, "
             f"{meta.get('seconds', '?')} s in all.", ""]
    acc = results.get("accuracy", [])
    if acc:
        datasets = sorted({r["dataset"] for r in acc})
        keeps = sorted({r["keep"] for r in acc if r["method"] != "full"}, reverse=True)
        ats = sorted({str(r["at"]) for r in acc if r["method"] != "full"})
        full = {r["dataset"]: r for r in acc if r["method"] == "full"}
        lines += ["## Accuracy relative to the unpatched model (linear probe, %)", "",
                  "Unpatched accuracy: " + ", ".join(
                      f"{d} {_pct(full[d]['accuracy'])}% (n={full[d]['n']})" for d in datasets)
                  + ". Cells: accuracy / unpatched accuracy; ± is the paired standard error of "
                  "the accuracy difference, relative. `work` = token-layers computed / "
                  "unpatched.", ""]
        for at in ats:
            head = "| method | " + " | ".join(f"{d} @{k}" for d in datasets for k in keeps) + \
                " | work @" + " | work @".join(str(k) for k in keeps) + " |"
            if len(ats) > 1:
                lines += [f"### at = {at}", ""]
            lines += [head, "|---" * (1 + len(datasets) * len(keeps) + len(keeps)) + "|"]
            cell = {(r["dataset"], r["method"], r["keep"]): r for r in acc
                    if str(r["at"]) == at}
            for m in dict.fromkeys(r["method"] for r in acc if r["method"] != "full"):
                vals = []
                for d in datasets:
                    for k in keeps:
                        r = cell.get((d, m, k))
                        base = full[d]["accuracy"]
                        vals.append("–" if r is None else
                                    f"{100 * r['accuracy'] / base:.1f} ± "
                                    f"{100 * r['sem_vs_full'] / base:.1f}")
                works = [cell.get((datasets[0], m, k)) for k in keeps]
                vals += ["–" if w is None else f"{w['work']:.2f}" for w in works]
                lines.append(f"| {m} | " + " | ".join(vals) + " |")
            lines.append("")
    fid = results.get("fidelity", [])
    if fid:
        keeps = sorted({r["keep"] for r in fid}, reverse=True)
        lines += [f"## Feature fidelity on the {fid[0]['n']} ImageNet photos "
                  f"({meta['photo_size']} px)", "",
                  "Mean cosine similarity to the unpatched features: CLS token (minimum over "
                  "photos in brackets) and CLS ⊕ mean patch token.", "",
                  "| method | " + " | ".join(f"CLS @{k} | pooled @{k}" for k in keeps) + " |",
                  "|---" * (1 + 2 * len(keeps)) + "|"]
        cell = {(r["method"], r["keep"]): r for r in fid}
        for m in dict.fromkeys(r["method"] for r in fid):
            vals = []
            for k in keeps:
                r = cell.get((m, k))
                vals += ["–", "–"] if r is None else [
                    f"{r['cos_cls']:.3f} ({r['cos_cls_min']:.3f})", f"{r['cos']:.3f}"]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        lines.append("")
    speed = results.get("speed", [])
    if speed:
        lines += ["## Throughput relative to the unpatched model", "",
                  "Median of interleaved repeats in one run; images/s of the unpatched model: "
                  + ", ".join(f"batch {r['batch']}: {r['images_per_s']:.1f}"
                              for r in speed if r["method"] == "full") + ".", "",
                  "| method | keep | × batch 1 | × batch 32 |", "|---|---:|---:|---:|"]
        cell = {(r["method"], r["keep"], r["batch"]): r["speedup"] for r in speed}
        for m, k in dict.fromkeys((r["method"], r["keep"]) for r in speed if r["method"] != "full"):
            b1, b32 = cell.get((m, k, 1)), cell.get((m, k, 32))
            lines.append(f"| {m} | {k} | {b1:.2f} | {b32:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_accuracy(results: dict, out: Path) -> Path | None:
    acc = [r for r in results.get("accuracy", []) if r["method"] != "full"]
    if not acc:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = {r["dataset"]: r["accuracy"] for r in results["accuracy"] if r["method"] == "full"}
    datasets = sorted(full)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        curves = defaultdict(list)
        for r in acc:
            if r["dataset"] == d:
                curves[(r["method"], str(r["at"]))].append((r["keep"], r["accuracy"] / full[d]))
        for (m, at), pts in curves.items():
            pts.sort()
            label = m if at in ("None", "default") else f"{m} @{at}"
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o",
                    lw=2.5 if m == "default" else 1.2, label=label)
        ax.set_title(f"{d}: accuracy relative to unpatched")
        ax.set_xlabel("fraction of patch tokens kept")
        ax.set_ylabel("% of unpatched accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kept_patches_picture(model, prep, methods, out: Path, keep: float = 0.25,
                         photos: int = 3) -> Path:
    """Rows: photos; columns: the original and each method. Kept patches show as they are,
    merged groups in their mean colour, dropped patches darkened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .vision_data import imagenet_photos, to_pixel_values

    ds = imagenet_photos()
    size, p = prep.image_size, prep.patch_size
    pixels = to_pixel_values(ds.images[:photos], size, prep.mean, prep.std)
    shown = (pixels * torch.tensor(prep.std).view(1, 3, 1, 1)
             + torch.tensor(prep.mean).view(1, 3, 1, 1)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    g = size // p
    cols = ["original"] + list(methods)
    fig, axes = plt.subplots(photos, len(cols), figsize=(1.8 * len(cols), 1.9 * photos),
                             squeeze=False)
    sources = {}
    for m in methods:
        with torch.inference_mode(), vision.reduce(model, m, keep=keep) as r:
            model(pixel_values=pixels)
        sources[m] = r.last.source.cpu().numpy()
    for i in range(photos):
        img = shown[i]
        patches = img.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p, p, 3)
        for j, col in enumerate(cols):
            ax = axes[i][j]
            if col == "original":
                pic = img
            else:
                src = sources[col][i]
                out_p = patches * 0.15
                for slot in np.unique(src[src >= 0]):
                    members = np.flatnonzero(src == slot)
                    out_p[members] = (patches[members] if len(members) == 1
                                      else patches[members].mean((0, 1, 2)))
                pic = out_p.reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(size, size, 3)
            ax.imshow(pic)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=8)
    fig.suptitle(f"patches kept at keep={keep} (dark: dropped; flat colour: merged group)",
                 fontsize=9)
    fig.tight_layout()
    path = out / "kept_patches.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(results: dict, model, prep, out: Path) -> list[Path]:
    files = [out / "report.md"]
    files[0].write_text(markdown(results))
    plot = plot_accuracy(results, out)
    if plot:
        files.append(plot)
    methods = list(dict.fromkeys(r["method"] for r in results.get("fidelity", [])
                                 or results.get("accuracy", []) if r["method"] != "full"))
    if methods:
        files.append(kept_patches_picture(model, prep, methods, out))
    return files
