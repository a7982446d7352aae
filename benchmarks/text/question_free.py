"""Summarise question-free compression from a ``tokensieve bench text`` run's records:
per method and ratio over all items, answer retention and the gold answer's NLL change
against the full prompt (nats per answer token and summed over the answer), each with its
paired standard error over items, plus the reader's F1. Writes question_free.{json,md}.

    .venv/bin/python benchmarks/text/question_free.py benchmarks/results/text-question-free
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def summarise(rows: list[dict]) -> list[dict]:
    full = {(r["reader"], r["task"], r["item"]): r for r in rows if r["method"] == "full"}
    groups = defaultdict(list)
    for r in rows:
        if r["method"] != "full" and (r["reader"], r["task"], r["item"]) in full:
            groups[(r["method"], r["ratio"])].append(r)
    out = []
    for (method, ratio), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        base = [full[(r["reader"], r["task"], r["item"])] for r in rs]
        d_sum = [r["nll"] - b["nll"] for r, b in zip(rs, base, strict=True)]
        d_tok = [d / max(1, r["answer_tokens"]) for d, r in zip(d_sum, rs, strict=True)]
        ret, ret_se = mean_se([float(r["retained"]) for r in rs])
        tok, tok_se = mean_se(d_tok)
        tot, tot_se = mean_se(d_sum)
        out.append({"method": method, "ratio": ratio, "items": len(rs),
                    "tasks": sorted({r["task"] for r in rs}), "retained": ret,
                    "retained_se": ret_se, "delta_nll_per_token": tok,
                    "delta_nll_per_token_se": tok_se, "delta_nll_sum": tot,
                    "delta_nll_sum_se": tot_se,
                    "f1": float(np.mean([r.get("f1", 0.0) for r in rs])),
                    "compress_seconds": float(np.mean([r["seconds"] for r in rs]))})
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| ratio | method | items | answer retained | ΔNLL / answer token | "
             "ΔNLL per answer | F1 | compress s |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['ratio']:g} | {s['method']} | {s['items']} | {s['retained']:.2f} ± "
                     f"{s['retained_se']:.2f} | {s['delta_nll_per_token']:+.3f} ± "
                     f"{s['delta_nll_per_token_se']:.3f} | {s['delta_nll_sum']:+.2f} ± "
                     f"{s['delta_nll_sum_se']:.2f} | {s['f1']:.3f} | "
                     f"{s['compress_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(folder: str) -> None:
    out = Path(folder)
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()
            if line.strip()]
    summary = summarise(rows)
    (out / "question_free.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "question_free.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main(sys.argv[1])
