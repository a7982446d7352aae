"""JSON, Markdown table and held-out-loss-vs-FLOPs curves of the training benchmark."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .cli_main import write_files

COLUMNS = ("run", "seeds", "steps", "tokens ×", "FLOPs ×", "time ×", "dev loss",
           "dev loss (informative)", "dev accuracy %", "test loss", "test loss (informative)",
           "test accuracy %", "FLOPs × to full's dev loss")
FULL = "all"


def flops_to_reach(curve: list[dict], target: float) -> float | None:
    """FLOPs at which the dev loss first falls to ``target`` (linear between curve points),
    ``None`` if it never does."""
    for a, b in zip(curve, curve[1:], strict=False):
        if b["loss"] <= target:
            if a["loss"] <= target:
                return float(a["flops"])
            t = (a["loss"] - target) / (a["loss"] - b["loss"])
            return a["flops"] + t * (b["flops"] - a["flops"])
    return None


def summary(results: dict) -> list[dict]:
    """One row per run label: the mean (and spread over seeds) of each measure, ratios to
    the full run of the same seed."""
    budget = results["meta"]["budget_flops"]
    full = {r["seed"]: r for r in results["runs"] if r["label"] == FULL}
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in results["runs"]:
        by_label[r["label"]].append(r)
    rows = []
    for label, recs in by_label.items():
        vals: dict[str, list[float]] = defaultdict(list)
        for r in recs:
            vals["steps"].append(r["steps"])
            for split in ("dev", "test"):
                for k, v in r[split].items():
                    vals[f"{split}_{k}"].append(v)
            f = full.get(r["seed"])
            if f is not None:
                vals["tokens_ratio"].append(r["tokens"] / f["tokens"])
                vals["flops_ratio"].append(r["flops"] / f["flops"])
                vals["time_ratio"].append(r["train_s"] / max(f["train_s"], 1e-9))
                reach = flops_to_reach(r["curve"], f["dev"]["loss"])
                vals["reach_ratio"].append(float("nan") if reach is None else reach / budget)
        row = {"label": label, "method": recs[0]["method"], "keep": recs[0]["keep"],
               "seeds": len(recs)}
        for k, v in vals.items():
            if any(x != x for x in v):  # a seed never got there (NaN): no mean
                row[k] = row[k + "_sd"] = float("nan")
                continue
            row[k] = statistics.fmean(v)
            row[k + "_sd"] = statistics.stdev(v) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def best_on_dev(rows: list[dict]) -> str | None:
    """The selector (not the full run) with the lowest mean dev loss."""
    cands = [r for r in rows if r["label"] != FULL]
    return min(cands, key=lambda r: r["dev_loss"])["label"] if cands else None


def _cell(row: dict, key: str, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    if key not in row or row[key] != row[key]:  # missing or NaN
        return "–"
    s = fmt.format(scale * row[key])
    return s + (" ± " + fmt.format(scale * row[key + "_sd"]) if row["seeds"] > 1 else "")


def markdown(results: dict) -> str:
    meta = results["meta"]
    cfg, shape = meta["config"], meta["shape"]
    rows = summary(results)
    best = best_on_dev(rows)
    lines = [
        "# Token-selective training at equal FLOPs (language modelling)", "",
        f"A Llama trained from scratch with SmolLM2's tokenizer: hidden {shape['hidden']}, "
        f"{shape['layers']} layers, {shape['heads']} heads ({shape['kv_heads']} KV), MLP "
        f"{shape['intermediate']}, vocabulary {meta['vocab']}, tied embeddings "
        f"({meta['params'] / 1e6:.1f} M parameters). Blocks of {cfg['block_len']} tokens, "
        f"batch {cfg['batch']}, peak lr {cfg['lr']}; budget = the full run's {cfg['steps']} "
        f"steps = {meta['budget_flops']:.3g} FLOPs; seeds "
        f"{meta.get('seeds') or list(range(cfg['seed'], cfg['seed'] + cfg['seeds']))}"
        + (f" ({meta['merged_runs']} runs merged from an earlier results file)"
           if meta.get("merged_runs") else "") + ".", "",
        f"**The LM head is {100 * meta['head_share']:.0f}% of a full-token step's FLOPs at this "
        "size**, so running it only on the kept rows saves far more here than in a larger "
        "model, where the body dominates.", "",
        (f"Reference ({meta['reference']}): per-token losses on {meta['reference_windows']} "
         f"training blocks, computed once: {meta['reference_flops']:.3g} FLOPs "
         f"({meta['reference_flops'] / meta['budget_flops']:.2f}× the budget), not charged to "
         "the excess runs. " if meta["reference_windows"] else
         f"Reference ({meta['reference']}): used only to mark the informative held-out tokens "
         "(no excess run here). ")
        + "Held out: "
        f"{meta['eval_windows']} blocks per split; informative tokens = the "
        f"{100 * cfg['informative']:.0f}% with the highest reference loss. Accuracy: next-token "
        "top-1. Ratios (×) are to the full run of the same seed; time = training seconds "
        f"(evaluation excluded). {meta['threads']} threads, {meta['seconds']:.0f} s in all "
        f"(estimated {meta['estimate_s'] / 60:.1f} min at the start).", "",
        "| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    for r in rows:
        name = f"**{r['label']}**" if r["label"] == best else r["label"]
        cells = [name, str(r["seeds"]), f"{r['steps']:.0f}", _cell(r, "tokens_ratio", "{:.2f}"),
                 _cell(r, "flops_ratio", "{:.3f}"), _cell(r, "time_ratio", "{:.2f}"),
                 _cell(r, "dev_loss"), _cell(r, "dev_loss_informative"),
                 _cell(r, "dev_accuracy", "{:.2f}", 100), _cell(r, "test_loss"),
                 _cell(r, "test_loss_informative"), _cell(r, "test_accuracy", "{:.2f}", 100),
                 _cell(r, "reach_ratio", "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best is not None:
        lines += [f"Best selector on dev (bold): `{best}`. \"FLOPs × to full's dev loss\": the "
                  "fraction of the budget after which the run's dev loss first reached the full "
                  "run's final dev loss (– never).", ""]
    lines += targets(rows)
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets per selector: the full run's dev loss with <= 70% of its FLOPs,
    or a test loss below the full run's by more than the seed spread (needs >= 2 seeds)."""
    full = next((r for r in rows if r["label"] == FULL), None)
    sel = [r for r in rows if r["label"] != FULL]
    if full is None or not sel:
        return []
    out = ["## Targets", "",
           "| run | FLOPs × to full's dev loss (≤ 0.70?) | test loss − full | seed spread (sd) "
           "| beats full by more than the spread? |", "|---|---:|---:|---:|---|"]
    for r in sel:
        reach = r.get("reach_ratio", float("nan"))
        hit = "–" if reach != reach else f"{reach:.2f} ({'yes' if reach <= 0.7 else 'no'})"
        diff = r["test_loss"] - full["test_loss"]
        if min(r["seeds"], full["seeds"]) < 2:
            spread, beats = "–", "needs ≥ 2 seeds"
        else:
            sd = max(r["test_loss_sd"], full["test_loss_sd"])
            spread, beats = f"{sd:.3f}", "yes" if -diff > sd else "no"
        out.append(f"| {r['label']} | {hit} | {diff:+.3f} | {spread} | {beats} |")
    return out + [""]


def plot_curves(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = results["meta"]["budget_flops"]
    curves: dict[str, list[list[dict]]] = defaultdict(list)
    for r in results["runs"]:
        curves[r["label"]].append(r["curve"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "loss", "all tokens"),
                           (axes[1], "loss_informative", "informative tokens")):
        later: list[float] = []
        for label, cs in curves.items():
            n = min(len(c) for c in cs)
            x = [statistics.fmean(c[i]["flops"] for c in cs) / budget for i in range(n)]
            y = [statistics.fmean(c[i][key] for c in cs) for i in range(n)]
            ax.plot(x, y, marker="o", ms=3, lw=2.5 if label == FULL else 1.2, label=label)
            later += y[1:]
        if later:  # the untrained model's loss (~ln vocab) would flatten the rest
            lo, hi = min(later), max(later)
            pad = 0.1 * (hi - lo) or 0.05
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"held-out (dev) loss, {title}")
        ax.set_xlabel("FLOPs / budget")
        ax.set_ylabel("cross-entropy (nats)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, out: Path) -> list[Path]:
    """results.json, report.md and curves.png in ``out``."""
    return write_files(results, out, markdown, plot_curves)
