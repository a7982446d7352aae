"""Prefill time of tokensieve's KV policies and kvpress's TOVA as a ratio to the uncompressed
prefill, on the KV benchmark's items (median of 3, same process, interleaved), plus the most
KV bytes tokensieve held at once during the prefill. ``kv.answer``'s own inputs are used
(number / ID spans kept whole, sentence units), so the times are what a user pays.

    .venv/bin/python benchmarks/kv/prefill_timing.py   # -> benchmarks/results/kv-prefill/
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from tokensieve import kv
from tokensieve.bench.kv_press import make_press
from tokensieve.bench.kv_tasks import make_item
from tokensieve.models import load_causal_lm

OUT = Path("benchmarks/results/kv-prefill")


@torch.no_grad()
def main(lengths=(2048, 4096), tasks=("code_essay", "multifact"), keep=0.25,
         policies=("default", "tova", "information"), repeats=3, dtype="float32") -> None:
    torch.set_num_threads(2)
    import kvpress  # noqa: F401  (wraps attention functions process-wide: same for everyone)

    lm = load_causal_lm("default", dtype=dtype)
    model, tok = lm.model, lm.tokenizer
    rows = []
    for length in lengths:
        for task in tasks:
            item = make_item(tok, task, length)
            ctx, _ = kv.chat_parts(tok, item.context, item.question)
            ids = torch.tensor([ctx])
            whole = kv.number_spans(tok, item.context, item.question)
            units = kv.sentence_spans(tok, item.context, item.question)
            names = ["full", *(f"tokensieve:{p}" for p in policies), "kvpress:tova"]
            times: dict[str, list[float]] = {k: [] for k in names}
            peak, full_bytes = {}, 0
            for r in range(repeats + 1):  # the first round warms up, not counted
                for name in names:
                    t0 = time.perf_counter()
                    if name == "full":
                        cache = DynamicCache(config=model.config)
                        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                        full_bytes = sum(la.keys.nbytes + la.values.nbytes for la in cache.layers)
                        del cache
                    elif name.startswith("tokensieve:"):
                        policy = name.partition(":")[2]
                        with kv.compress(model, policy, keep, whole=whole, units=units) as s:
                            model(ids, use_cache=True, logits_to_keep=1)
                        peak[name] = s.last_cache.peak_bytes
                    else:
                        with make_press("tova", 1 - keep)(model):
                            model(ids, past_key_values=DynamicCache(config=model.config),
                                  use_cache=True, logits_to_keep=1)
                    if r:
                        times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"task": task, "length": length, "tokens": len(ctx), "whole_spans": len(whole),
                   "units": len(units), "full_s": med["full"],
                   **{f"x_{k}": med[k] / med["full"] for k in names if k != "full"},
                   **{f"peak_kv_fraction_{k}": v / full_bytes for k, v in peak.items()}}
            rows.append(row)
            print(row, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"keep": keep, "dtype": dtype, "repeats": repeats, "threads": 2,
            "default_policy": kv.DEFAULT_POLICY}
    (OUT / "prefill.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    cols = [k for k in names if k != "full"]
    lines = [f"# Prefill time over no compression (keep {keep}, {dtype}, median of {repeats}, "
             f"default = {kv.DEFAULT_POLICY})", "",
             "| task | tokens | full prefill s | " + " | ".join(cols) +
             " | " + " | ".join(f"peak KV / full, {c}" for c in peak) + " |",
             "|---|---:|---:|" + "---:|" * (len(cols) + len(peak))]
    for r in rows:
        lines.append(f"| {r['task']} | {r['tokens']} | {r['full_s']:.2f} | " +
                     " | ".join(f"{r[f'x_{c}']:.2f}x" for c in cols) + " | " +
                     " | ".join(f"{r[f'peak_kv_fraction_{c}']:.3f}" for c in peak) + " |")
    (OUT / "prefill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096])
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--policies", nargs="+", default=["default", "tova", "information"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    main(lengths=tuple(args.lengths), keep=args.keep, policies=tuple(args.policies),
         repeats=args.repeats)
