"""Aggregate benchmark rows into a JSON summary, a Markdown table and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def aggregate(rows: list[dict]) -> list[dict]:
    """One summary row per (reader, task, method, ratio), compared with the full prompt on
    the same items."""
    full = {(r["reader"], r["item"]): r for r in rows if r["method"] == "full"}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["reader"], r["task"], r["method"], r["ratio"])].append(r)
    out = []
    for (reader, task, method, ratio), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], -kv[0][3], kv[0][2])):
        base = [full[(reader, r["item"])] for r in rs if (reader, r["item"]) in full]
        nll, nll_full = _mean(rs, "nll"), _mean(base, "nll")
        quality_key = "correct" if task == "math_qa" else "f1"
        row = {"reader": reader, "task": task, "method": method, "ratio": ratio, "n": len(rs),
               "quality_metric": "accuracy" if task == "math_qa" else "F1",
               "quality": _mean(rs, quality_key), "em": _mean(rs, "em"),
               "contains": _mean(rs, "contains"),
               "full_quality": _mean(base, quality_key), "nll": nll, "nll_full": nll_full,
               "rel_nll_increase": (nll - nll_full) / nll_full if nll_full else None}
        if method != "full":
            prefill = {r["item"]: full[(reader, r["item"])].get("prefill_seconds") for r in rs
                       if (reader, r["item"]) in full}
            ok = [r for r in rs if not r.get("error")]
            row.update(
                errors=len(rs) - len(ok),
                retained=_mean(ok, "retained"),
                budget_used=_mean([{"v": r["reader_tokens"] / max(1, r["target"])} for r in ok],
                                  "v"),
                overshoots=sum(r["reader_tokens"] > r["target"] for r in ok),
                tokens_per_s=(sum(r["context_tokens"] for r in ok) /
                              max(1e-9, sum(r["seconds"] for r in ok))) if ok else None,
                x_prefill=_mean([{"v": r["seconds"] / prefill[r["item"]]} for r in ok
                                 if prefill.get(r["item"])], "v"),
                faithful=_mean(ok, "faithful"),
                altered_numbers=sum(r.get("altered_numbers", 0) for r in ok),
            )
        out.append(row)
    return out


def _fmt(v, pct=False, digits=2) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:+.1f}%"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(summary: list[dict], meta: dict) -> str:
    lines = ["# Prompt compression benchmark", "",
             f"Tasks {', '.join(meta['tasks'])}; {meta['items_per_task']} items per task; "
             f"ratios kept {meta['ratios']}; readers {', '.join(meta['readers'])}; seed "
             f"{meta['seed']}; {meta['threads']} threads; wall time {meta['wall_seconds']} s. "
             f"Anchors: {meta['anchors']}. Not runnable: "
             + "; ".join(f"{k} ({v})" for k, v in meta["not_runnable"].items()) + ".", "",
             "quality = F1 of the reader's greedy answer (accuracy by likelihood for math_qa); "
             "ΔNLL = relative increase of the gold answer's negative log-likelihood vs the "
             "full prompt (lower is better, 0 = no loss); retained = gold answer still in "
             "the compressed context; budget = achieved / requested tokens; ×prefill = "
             "compression time / the reader's prefill time on the full prompt.", ""]
    for reader in sorted({r["reader"] for r in summary}):
        lines += [f"## Reader: {reader}", "",
                  "| task | kept | method | quality | ΔNLL | retained | budget | overshoots "
                  "| tok/s | ×prefill | faithful | altered # | errors |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in summary:
            if r["reader"] != reader:
                continue
            if r["method"] == "full":
                lines.append(f"| {r['task']} | 1.0 | **full prompt** | {_fmt(r['quality'])} | "
                             f"0 | 1.00 | – | – | – | – | – | – | – |")
                continue
            lines.append(
                f"| {r['task']} | {r['ratio']} | {r['method']} | {_fmt(r['quality'])} | "
                f"{_fmt(r['rel_nll_increase'], pct=True)} | {_fmt(r['retained'])} | "
                f"{_fmt(r['budget_used'])} | {r['overshoots']} | "
                f"{_fmt(r['tokens_per_s'], digits=0)} | {_fmt(r['x_prefill'])} | "
                f"{_fmt(r['faithful'])} | {r['altered_numbers']} | {r['errors']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for reader in sorted({r["reader"] for r in summary}):
        rows = [r for r in summary if r["reader"] == reader and r["method"] != "full"]
        tasks = sorted({r["task"] for r in rows})
        for metric, label in (("rel_nll_increase", "gold-answer NLL increase vs full"),
                              ("retained", "gold answer retained"), ("quality", "quality")):
            fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4.2),
                                     squeeze=False)
            methods = sorted({r["method"] for r in rows})
            colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(2, len(methods))))
            for ax, task in zip(axes[0], tasks, strict=True):
                for colour, method in zip(colours, methods, strict=False):
                    pts = sorted((1 / r["ratio"], r[metric]) for r in rows if r["task"] == task
                                 and r["method"] == method and r[metric] is not None)
                    if not pts:
                        continue
                    ours = method.startswith(("tokensieve", "ts-"))
                    style = "-" if ours else (":" if method.startswith("random") else "--")
                    ax.plot(*zip(*pts, strict=True), style, marker="o", color=colour,
                            label=method, linewidth=2.6 if method == "tokensieve" else 1.2)
                ax.set_xscale("log", base=2)
                ax.set_title(task)
                ax.set_xlabel("compression (x)")
                ax.set_ylabel(label)
            handles, labels = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=7)
            fig.tight_layout(rect=(0, 0.14, 1, 1))
            name = f"{metric}-{Path(reader).name}.png"
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            files.append(name)
    return files


def write_report(rows: list[dict], meta: dict, out: Path) -> dict:
    summary = aggregate(rows)
    meta = {**meta, "plots": plot(summary, out)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))
    (out / "report.md").write_text(markdown(summary, meta))
    return {"meta": meta, "summary": summary}
