"""JSON, Markdown table and an accuracy-vs-FLOPs plot of the SFT benchmark."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .cli_main import write_files

FULL = "all"
COLUMNS = ("run", "seeds", "examples", "answer tokens ×", "trained tokens ×", "FLOPs ×",
           "time ×", "held-out accuracy %", "accuracy (norm) %", "− full (points)")


def summary(results: dict) -> list[dict]:
    """One row per run: mean and spread over seeds; ratios to ``all`` of the same seed."""
    full = {r["seed"]: r for r in results["runs"] if r["label"] == FULL}
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in results["runs"]:
        by_label[r["label"]].append(r)
    rows = []
    for label, recs in by_label.items():
        vals: dict[str, list[float]] = defaultdict(list)
        for r in recs:
            vals["examples"].append(r["examples"])
            vals["accuracy"].append(r["held_out"]["accuracy"])
            vals["accuracy_norm"].append(r["held_out"]["accuracy_norm"])
            f = full.get(r["seed"])
            if f is not None:
                vals["answer_ratio"].append(r["answer_tokens"] / f["answer_tokens"])
                vals["trained_ratio"].append(r["trained_tokens"] / f["trained_tokens"])
                vals["flops_ratio"].append(r["flops"] / f["flops"])
                vals["time_ratio"].append(r["train_s"] / max(f["train_s"], 1e-9))
                vals["gain"].append(r["held_out"]["accuracy"] - f["held_out"]["accuracy"])
        row = {"label": label, "seeds": len(recs)}
        for k, v in vals.items():
            row[k] = statistics.fmean(v)
            row[k + "_sd"] = statistics.stdev(v) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def _cell(row: dict, key: str, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    if key not in row:
        return "–"
    s = fmt.format(scale * row[key])
    sd = fmt.replace("+", "").format(scale * row[key + "_sd"])
    return s + (" ± " + sd if row["seeds"] > 1 else "")


def targets(rows: list[dict]) -> list[str]:
    """The issue's SFT target: a run at <= 50% of the answer tokens matches or beats full
    data on the held-out tasks (within / beyond the larger seed spread)."""
    full = next((r for r in rows if r["label"] == FULL), None)
    if full is None:
        return []
    out = ["## Target: ≤ 50% of the tokens, held-out accuracy ≥ full data", "",
           "| run | answer tokens × | accuracy − full (points) | seed spread (sd, points) "
           "| verdict |", "|---|---:|---:|---:|---|"]
    for r in rows:
        if r["label"] == FULL or "answer_ratio" not in r or r["answer_ratio"] > 0.5 + 1e-9:
            continue
        gain = 100 * r["gain"]
        sd = 100 * max(r["accuracy_sd"], full["accuracy_sd"])
        if min(r["seeds"], full["seeds"]) < 2:
            verdict = "beats" if gain > 0 else "matches" if gain == 0 else "below"
            verdict += " (1 seed: no spread yet)"
        else:
            verdict = ("beats" if gain > sd else "matches (within the spread)" if gain >= -sd
                       else "below")
        out.append(f"| {r['label']} | {r['answer_ratio']:.2f} | {gain:+.1f} | "
                   f"{sd:.1f} | {verdict} |")
    return out + [""]


def markdown(results: dict) -> str:
    meta, base = results["meta"], results["base"]
    cfg = meta["config"]
    rows = summary(results)
    seeds = sorted({r["seed"] for r in results["runs"]})
    sc = meta.get("tshirt_scoring")
    lines = [
        "# Supervised fine-tuning with sample and token pruning", "",
        f"{meta['model']} fine-tuned on the quiz SFT set ({meta['source'].get('package')}, "
        f"{len(meta['train_tasks'])} train tasks; {len(meta['held_out_tasks'])} held-out tasks "
        f"of other question types: {', '.join(meta['held_out_tasks'])}). Pool: the first "
        f"{meta['pool']} train examples; one epoch per run, batch {cfg['batch']}, peak lr "
        f"{cfg['lr']}, AdamW; loss on the answer tokens. Held-out: {meta['held_out_examples']} "
        f"examples, four options, the lowest summed loss (norm: per character). Seeds {seeds} "
        "(data order, random choices). Ratios (×) are to `all` of the same seed; trained "
        "tokens = tokens through a forward and backward with gradients; FLOPs include every "
        f"selection pass. {meta['threads']} threads.", "",
        f"Base model (no fine-tuning): {100 * base['accuracy']:.1f}% (norm "
        f"{100 * base['accuracy_norm']:.1f}%); chance {100 * base['chance']:.1f}%.", ""]
    if sc:
        lines += [f"T-SHIRT scoring (once, base model, shared by every seed): "
                  f"{sc['forward_tokens']} forward tokens without gradients, "
                  f"{sc['seconds']:.0f} s; not in the FLOPs column.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["label"], str(r["seeds"]), f"{r['examples']:.0f}",
            _cell(r, "answer_ratio"), _cell(r, "trained_ratio"), _cell(r, "flops_ratio"),
            _cell(r, "time_ratio"), _cell(r, "accuracy", "{:.1f}", 100),
            _cell(r, "accuracy_norm", "{:.1f}", 100),
            "–" if r["label"] == FULL else _cell(r, "gain", "{:+.1f}", 100)]) + " |")
    lines.append("")
    tasks = sorted(base["per_task"])
    lines += ["## Per held-out task (accuracy %, mean over seeds)", "",
              "| run | " + " | ".join(tasks) + " |", "|---" + "|---:" * len(tasks) + "|",
              "| base | " + " | ".join(f"{100 * base['per_task'][t]:.0f}" for t in tasks) + " |"]
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in results["runs"]:
        by_label[r["label"]].append(r)
    for label, recs in by_label.items():
        cells = [f"{100 * statistics.fmean(x['held_out']['per_task'].get(t, 0) for x in recs):.0f}"
                 for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines + targets(rows))


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in summary(results):
        if "flops_ratio" not in r:
            continue
        ax.errorbar(r["flops_ratio"], 100 * r["accuracy"], yerr=100 * r["accuracy_sd"],
                    fmt="o", capsize=3, label=r["label"])
    ax.axhline(100 * results["base"]["accuracy"], color="grey", ls="--", lw=1,
               label="base model")
    ax.axhline(100 * results["base"]["chance"], color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("training FLOPs / full data's")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("SFT: held-out tasks vs training compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, out: Path) -> list[Path]:
    """results.json, report.md and accuracy.png in ``out``."""
    return write_files(results, out, markdown, plot)
