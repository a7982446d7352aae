"""Summarise KV benchmark rows: JSON, a Markdown table and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _sem(vals) -> float | None:
    """Standard error of the mean (0 for one value)."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0


def _keep(row: dict) -> float:
    """The fraction kept (rows of older runs stored ``ratio``, the fraction removed)."""
    return row["keep"] if "keep" in row else 1 - row["ratio"]


def aggregate(rows: list[dict]) -> dict:
    tasks = sorted({r["task"] for r in rows if r["kind"] == "task"})
    full = {r["item"]: r for r in rows if r["kind"] == "task" and r["method"] == "full"}
    fid = {(r["method"], _keep(r)): r for r in rows if r["kind"] == "fidelity"}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "task":
            groups[(r["method"], _keep(r))].append(r)
    full_score = {t: _mean(r["score"] for r in full.values() if r["task"] == t) for t in tasks}
    summary = []
    for (method, keep), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        ok = [r for r in rs if not r.get("error")]
        per_task = {t: _mean(r["score"] for r in rs if r["task"] == t) for t in tasks}
        # the spread: standard error of the mean over the items of each task
        per_task_sem = {t: _sem([r["score"] for r in rs if r["task"] == t]) for t in tasks}
        n_task = {t: sum(r["task"] == t for r in rs) for t in tasks}
        score = _mean(per_task.values())
        sem = (float(np.sqrt(sum(v ** 2 for v in per_task_sem.values() if v is not None)))
               / max(1, len(tasks))) if tasks else None
        full_mean = _mean(full_score.values())
        per_len = {str(n): _mean(r["score"] for r in rs if r["length"] == n)
                   for n in sorted({r["length"] for r in rs})}

        def ratio_to_full(key, ok=ok):
            return _mean(r[key] / full[r["item"]][key] for r in ok
                         if r.get(key) and r["item"] in full and full[r["item"]].get(key))

        kept = ratio_to_full("stored_bytes")
        # paired with the full cache on the same items: the difference and its spread
        diffs = [r["score"] - full[r["item"]]["score"] for r in rs if r["item"] in full]
        by_kind: dict[str, list[float]] = defaultdict(list)
        by_turn: dict[int, list[float]] = defaultdict(list)   # k-th question from one cache
        for r in rs:
            if r.get("kinds"):
                for k, s in enumerate(r.get("question_scores") or (), 1):
                    by_turn[k].append(s)
            for kind, s in zip(r.get("kinds") or (), r.get("question_scores") or (),
                               strict=False):
                by_kind[kind].append(s)
        f = fid.get((method, keep), {})
        summary.append({
            "method": method, "keep": keep, "n": len(rs), "errors": len(rs) - len(ok),
            "error_example": next((r["error"] for r in rs if r.get("error")), None),
            "score": score, "sem": sem, "per_task": per_task, "per_task_sem": per_task_sem,
            "items_per_task": n_task, "per_length": per_len,
            "vs_full": _mean(diffs), "vs_full_sem": _sem(diffs),
            "per_kind": {k: _mean(v) for k, v in sorted(by_kind.items())},
            "questions_per_kind": {k: len(v) for k, v in sorted(by_kind.items())},
            "per_turn": {k: _mean(v) for k, v in sorted(by_turn.items())},
            "of_full": score / full_mean if score is not None and full_mean else None,
            "kv_kept": kept,
            "budget_error": None if kept is None or method == "full"
            else abs(kept - keep) / keep,
            "x_prefill": ratio_to_full("prefill_seconds"),
            "x_decode": ratio_to_full("decode_seconds"),
            # resident-memory growth per call, kept in the JSON only: freed blocks stay in
            # the allocator between calls of one process, so it is not comparable across rows
            "peak_rss_mb": _mean(r.get("peak_mb") for r in ok),
            "kl": f.get("kl"), "top1": f.get("top1"), "fidelity_error": f.get("error"),
        })
    return {"tasks": tasks, "summary": summary}


def _f(v, digits=2, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def markdown(agg: dict, meta: dict) -> str:
    tasks = agg["tasks"]
    lines = [
        f"# KV-cache compression: {meta.get('model', '?')} ({meta.get('dtype', '?')}, "
        f"{meta.get('attn', '?')}), {meta.get('items', '?')} item(s) per task and length",
        "",
        f"Lengths {meta.get('lengths')} tokens, seed {meta.get('seed')}, "
        f"{meta.get('threads')} threads, wall {meta.get('wall_seconds')} s. `keep` = fraction "
        f"of the context's KV kept. Scores are task accuracy (string match; a multi-question "
        f"item scores the mean over its questions), mean over items and lengths, ± the "
        f"standard error over items; `of full` = mean score / the full cache's mean score; "
        f"`kept` = stored KV bytes / full cache; `×prefill`, "
        f"`×decode` = time over the no-compression run on the same item (query-aware `+q` "
        f"rows prefill inside decode); "
        + (f"KL / top-1 = teacher-forced fidelity vs the full cache on "
           f"{meta.get('fidelity_context')} tokens of pydoc text (128 continuation tokens). "
           if meta.get("fidelity_context") else "KL / top-1 not run (fidelity length 0). ") +
        f"tokensieve's `default` is `{meta.get('default_policy')}`.",
        "",
        "| keep | method | " + " | ".join(tasks) + " | mean ± s.e. | of full | − full ± paired "
        "s.e. | kept | ×prefill | ×decode | KL | top-1 | errors |",
        "|---:|---|" + "---:|" * (len(tasks) + 9),
    ]
    for s in agg["summary"]:
        cells = [_f(s["per_task"].get(t)) for t in tasks]
        lines.append(
            f"| {s['keep']:g} | {s['method']} | " + " | ".join(cells) +
            f" | **{_f(s['score'])}** ± {_f(s.get('sem'))} | {_f(s.get('of_full'), pct=True)} "
            f"| {_f(s.get('vs_full'))} ± {_f(s.get('vs_full_sem'))} "
            f"| {_f(s['kv_kept'], 3)} | {_f(s['x_prefill'])} | "
            f"{_f(s['x_decode'])} | {_f(s['kl'], 3)} | "
            f"{_f(s['top1'])} | {s['errors'] or ''} |")
    masked = [s["method"] for s in agg["summary"] if s["method"] != "full"
              and s.get("kv_kept") is not None and s["kv_kept"] > s["keep"] + 0.1]
    if masked:
        lines += ["", f"{', '.join(sorted(set(masked)))}: `kept` is above `keep` because the "
                  "cache is not shrunk; the evicted entries are masked in attention instead "
                  "(kvpress's AdaKV and KVzip work this way), so no memory is saved."]
    kinds = sorted({k for s in agg["summary"] for k in s.get("per_kind") or {}})
    if kinds:
        lines += ["", "Accuracy per kind of fact (questions of the `facts_*` tasks, count in "
                  "brackets) and by the question's turn: the four questions of an item are "
                  "asked one after the other from the one compressed cache:", "",
                  "| keep | method | " + " | ".join(kinds) + " | 1st | 2nd | 3rd | 4th question |",
                  "|---:|---|" + "---:|" * (len(kinds) + 4)]
        for s in agg["summary"]:
            if s.get("per_kind"):
                cells = [f"{_f(s['per_kind'].get(k))} ({s['questions_per_kind'].get(k, 0)})"
                         for k in kinds]
                turns = [_f(s["per_turn"].get(k)) for k in range(1, 5)]
                lines.append(f"| {s['keep']:g} | {s['method']} | " + " | ".join(cells + turns)
                             + " |")
    errs = [s for s in agg["summary"] if s["errors"] or s.get("fidelity_error")]
    if errs:
        lines += ["", "Errors (a failed run scores 0):", ""]
        for s in errs:
            lines.append(f"- {s['method']} @ keep {s['keep']:g}: "
                         f"{s['error_example'] or s['fidelity_error']}")
    return "\n".join(lines) + "\n"


def plot(agg: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    by_method: dict[str, list] = defaultdict(list)
    for s in agg["summary"]:
        if s["method"] != "full":
            by_method[s["method"]].append(s)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, ss in sorted(by_method.items()):
        ss = sorted(ss, key=lambda s: s["keep"])
        style = "-" if method.startswith("tokensieve") else "--"
        ax.errorbar([s["keep"] for s in ss], [s["score"] for s in ss],
                    yerr=[s.get("sem") or 0 for s in ss], fmt=style, marker="o", capsize=3,
                    label=method)
    full = next((s["score"] for s in agg["summary"] if s["method"] == "full"), None)
    if full is not None:
        ax.axhline(full, color="black", lw=0.8, label="full cache")
    ax.set_xlabel("fraction of the context's KV kept")
    ax.set_ylabel("mean task accuracy")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "kv_accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path.name]


def write_report(rows: list[dict], meta: dict, out: Path) -> dict:
    agg = aggregate(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(agg, meta))
    plots = plot(agg, out)
    result = {"meta": meta, **agg, "plots": plots}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result
