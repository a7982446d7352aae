"""Under-trained tokens of the embedded causal LMs, and sticky tokens of the embedded encoder.

``tokensieve.inspect.vocab`` on SmolLM2-135M-Instruct and Gemma-3-270M: indicators over
the whole vocabulary, the top ``--candidates`` verified by prompting, ``--control`` random
tokens verified the same way (false-alarm rate), and ``--per-bin`` random tokens from each
band of indicator ranks further down (how far down the list under-trained tokens reach: an
estimate of how many there are). ``tokensieve.inspect.sticky`` on all-MiniLM-L6-v2 with its
default screening, then once more with the first pass over every reachable token, to
measure what the cheap screen misses.

    .venv/bin/python benchmarks/inspect_vocab.py        # ~15 min on one shared core
    .venv/bin/python benchmarks/inspect_vocab.py --report-only

Writes ``results.json``, ``results.md`` and ``indicator.png`` into
``benchmarks/results/inspect-vocab/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

OUT = Path(__file__).parent / "results" / "inspect-vocab"
MODELS = {"default": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}
EDGES = [1000, 3000, 10000, 30000]  # bands of indicator ranks below the verified top


def run_lm(name: str, args) -> dict:
    from tokensieve.inspect.vocab import (
        CATEGORIES,
        indicators,
        repeat_probabilities,
        token_categories,
        vocab,
    )
    from tokensieve.models import load_causal_lm

    t0 = time.perf_counter()
    res = vocab(name, candidates=args.candidates, control=args.control, seed=args.seed)
    seconds = time.perf_counter() - t0
    lm = load_causal_lm(name)
    cats, pieces, _ = token_categories(lm.tokenizer, res.n_rows)
    normal = np.flatnonzero(cats == CATEGORIES.index("normal"))
    # the rank order among normal tokens, as vocab() ranks them
    indicator = indicators(lm.model, lm.tokenizer).indicator
    order = normal[np.argsort(-indicator[normal], kind="stable")]
    assert all(order[t.rank] == t.id for t in res.candidates), "rank order differs from vocab()"
    rng = np.random.default_rng(args.seed)
    bands = []
    edges = [args.candidates] + [e for e in EDGES if e > args.candidates] + [len(order)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lo >= hi:
            continue
        pick = sorted(rng.choice(np.arange(lo, hi), min(args.per_bin, hi - lo), replace=False))
        ids = [int(order[r]) for r in pick]
        p = repeat_probabilities(lm.model, lm.tokenizer, ids).max(1)
        failed = p < res.threshold
        bands.append({"ranks": [lo, hi], "n": len(ids), "failed": int(failed.sum()),
                      "fraction": round(float(failed.mean()), 3),
                      "failed_tokens": [pieces[i] for i, f in zip(ids, failed, strict=True)
                                        if f][:10],
                      "points": [[int(r), float(indicator[i]), float(q)] for r, i, q in
                                 zip(pick, ids, p, strict=True)]})
    top = res.candidates
    head = {"ranks": [0, len(top)], "n": len(top), "failed": len(res.under_trained),
            "fraction": round(len(res.under_trained) / max(1, len(top)), 3)}
    # estimated under-trained normal tokens: verified ones at the top + band fractions x size
    estimate = head["failed"] + sum(b["fraction"] * (b["ranks"][1] - b["ranks"][0])
                                    for b in bands)
    return {"model": name, "label": MODELS.get(name, name), "seconds": round(seconds, 1),
            "vocab_size": res.vocab_size, "rows": res.n_rows, "categories": res.categories,
            "reference_used": len(res.reference), "indicator": res.indicator,
            "threshold": res.threshold, "top": head, "bands": bands,
            "estimated_under_trained": int(round(estimate)),
            "control": res.control, "timings": res.timings, "notes": res.notes,
            "under_trained": [{"id": t.id, "piece": t.piece, "text": t.text, "rank": t.rank,
                               "indicator": t.indicator, "max_prob": t.max_prob}
                              for t in res.under_trained],
            "candidates_passed": [{"id": t.id, "piece": t.piece, "rank": t.rank,
                                   "max_prob": t.max_prob}
                                  for t in res.candidates if not t.under_trained],
            "unreachable": [{"id": t.id, "piece": t.piece, "indicator": t.indicator}
                            for t in res.unreachable[:50]],
            "points": [[t.rank, t.indicator, t.max_prob] for t in res.candidates]}


def run_sticky(args) -> dict:
    from tokensieve.inspect.sticky import sticky

    t0 = time.perf_counter()
    res = sticky(seed=args.seed, control=args.control_sticky)
    seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 1), "default": _sticky_dict(res)}
    if args.full_screen:
        t0 = time.perf_counter()
        full = sticky(seed=args.seed, screen=0, sample=0, control=0)
        found = {t.id for t in res.worst}
        top = full.worst[:20]
        out["full"] = {"seconds": round(time.perf_counter() - t0, 1),
                       "screened": full.screened, "top": _sticky_dict(full)["top"],
                       "recall_top20": round(sum(t.id in found for t in top) / len(top), 3),
                       "recall_top10": round(sum(t.id in found for t in top[:10]) / 10, 3)}
    return out


def _sticky_dict(res) -> dict:
    return {"encoder": res.encoder, "repeats": res.repeats, "n_pairs": res.n_pairs,
            "base_similarity": res.base_similarity, "screened": res.screened,
            "control": res.control, "categories": res.categories, "timings": res.timings,
            "top": [{"id": t.id, "piece": t.piece, "increase": t.increase, "raised": t.raised,
                     "first_pass": t.first_pass} for t in res.worst[:30]]}


def markdown(data: dict) -> str:
    lines = ["# Under-trained and sticky tokens", "",
             f"Wall time {data['meta']['wall_seconds'] / 60:.0f} min on "
             f"{data['meta']['threads']} thread(s), {data['meta']['machine']}.", ""]
    for r in data["lms"]:
        c = r["control"]
        lines += [f"## {r['label']} ({r['rows']} rows)", "",
                  f"Tokenizer categories: {r['categories']}; {r['reference_used']} known-unused "
                  f"tokens define the indicator ({r['indicator']}). Verified: max probability of "
                  f"the token over {3} repeat prompts < {r['threshold']}.", "",
                  "| indicator ranks | tokens verified | under-trained | fraction |",
                  "|---|---|---|---|",
                  f"| top {r['top']['n']} | {r['top']['n']} | {r['top']['failed']} | "
                  f"{r['top']['fraction']:.2f} |"]
        for b in r["bands"]:
            lines.append(f"| {b['ranks'][0]}–{b['ranks'][1]} (random sample) | {b['n']} | "
                         f"{b['failed']} | {b['fraction']:.2f} |")
        lines.append(f"| random normal tokens (control) | {c['n']} | {c['failed']} | "
                     f"{c['failed'] / max(1, c['n']):.2f} |")
        lines += ["", f"Estimated under-trained normal tokens: ~{r['estimated_under_trained']} "
                  "(verified at the top + band fraction x band size).", "",
                  "Top verified under-trained tokens:", "",
                  "| rank | id | token | indicator | max p |", "|---|---|---|---|---|"]
        for t in r["under_trained"][:25]:
            lines.append(f"| {t['rank']} | {t['id']} | `{_md(t['piece'])}` | "
                         f"{t['indicator']:.3f} | {t['max_prob']:.1e} |")
        if r["unreachable"]:
            lines += ["", f"Unreachable tokens ({r['categories']['unreachable']}), by "
                      "indicator: " + ", ".join(f"`{_md(t['piece'])}`"
                                                for t in r["unreachable"][:15])]
        lines.append("")
    s = data.get("sticky")
    if s:
        d = s["default"]
        lines += ["## Sticky tokens of all-MiniLM-L6-v2", "",
                  f"{d['n_pairs']} pairs of unrelated sentences (mean cosine "
                  f"{d['base_similarity']:.3f}); each token inserted {d['repeats']} times into "
                  f"every sentence; {d['screened']} tokens screened by the first pass. An "
                  f"ordinary token (median of {d['control']['n']} random ones) raises the mean "
                  f"cosine by {d['control']['median_increase']:.3f} (90th percentile "
                  f"{d['control']['p90_increase']:.3f}).", "",
                  "| token | id | mean cosine increase | pairs raised |", "|---|---|---|---|"]
        for t in d["top"][:20]:
            lines.append(f"| `{_md(t['piece'])}` | {t['id']} | {t['increase']:.3f} | "
                         f"{t['raised']:.0%} |")
        if "full" in s:
            f = s["full"]
            lines += ["", f"First pass over all {f['screened']} reachable tokens "
                      f"({f['seconds'] / 60:.0f} min): the default screen finds "
                      f"{f['recall_top10']:.0%} of its top 10 and {f['recall_top20']:.0%} of its "
                      "top 20. Its top 10: " + ", ".join(f"`{_md(t['piece'])}` "
                                                       f"({t['increase']:.3f})"
                                                       for t in f["top"][:10]) + "."]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return repr(text)[1:-1].replace("|", "\\|").replace("`", "'")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data["lms"]), figsize=(5 * len(data["lms"]), 3.6))
    for ax, r in zip(np.atleast_1d(axes), data["lms"], strict=True):
        pts = np.array(r["points"] + [p for b in r["bands"] for p in b["points"]])
        ax.scatter(pts[:, 1], np.maximum(pts[:, 2], 1e-9), s=8, alpha=0.6)
        ax.axhline(r["threshold"], color="red", lw=1, ls="--", label="threshold")
        ax.set_yscale("log")
        ax.set_xlabel("indicator (cosine to mean unused unembedding)")
        ax.set_ylabel("max repeat probability")
        ax.set_title(r["label"], fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--control", type=int, default=200)
    p.add_argument("--per-bin", type=int, default=40)
    p.add_argument("--control-sticky", type=int, default=100)
    p.add_argument("--no-sticky", action="store_true")
    p.add_argument("--full-screen", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the sticky first pass over every token (~6 min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    if args.report_only:
        data = json.loads(path.read_text())
    else:
        import torch

        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        data = {"lms": [run_lm(m, args) for m in args.models]}
        if not args.no_sticky:
            data["sticky"] = run_sticky(args)
        data["meta"] = {"wall_seconds": round(time.perf_counter() - started, 1),
                        "threads": args.threads, "seed": args.seed,
                        "candidates": args.candidates, "control": args.control,
                        "per_bin": args.per_bin,
                        "machine": platform.processor() or platform.machine()}
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    (args.out / "results.md").write_text(markdown(data))
    plot(data, args.out / "indicator.png")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
