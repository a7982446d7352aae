"""Prefill time of tokensieve's default KV policy and kvpress's TOVA as a ratio to the
uncompressed prefill, on the KV benchmark's items (median of 3, same process, interleaved),
plus the most KV bytes tokensieve held at once during the prefill.

    .venv/bin/python benchmarks/kv/prefill_timing.py   # -> benchmarks/results/kv-prefill/
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

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
def main(lengths=(1024, 2048, 4096), tasks=("niah_filler", "common_words"), ratio=0.5,
         repeats=3) -> None:
    torch.set_num_threads(2)
    import kvpress  # noqa: F401  (wraps attention functions process-wide: same for everyone)

    lm = load_causal_lm("default", dtype="auto")
    model, tok = lm.model, lm.tokenizer
    rows = []
    for length in lengths:
        for task in tasks:
            item = make_item(tok, task, length)
            ctx, _ = kv.chat_parts(tok, item.context, item.question)
            ids = torch.tensor([ctx])
            spans = kv.number_spans(tok, item.context, item.question)
            times = {"full": [], "tokensieve:default": [], "kvpress:tova": []}
            peak = full_bytes = 0
            for _ in range(repeats + 1):  # first round warms up, not counted
                t0 = time.perf_counter()
                cache = DynamicCache(config=model.config)
                model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                t_full = time.perf_counter() - t0
                full_bytes = sum(la.keys.nbytes + la.values.nbytes for la in cache.layers)
                del cache
                t0 = time.perf_counter()
                with kv.compress(model, "default", ratio, whole=spans) as s:
                    model(ids, use_cache=True, logits_to_keep=1)
                t_ts = time.perf_counter() - t0
                peak = s.last_cache.peak_bytes
                t0 = time.perf_counter()
                with make_press("tova", ratio)(model):
                    model(ids, past_key_values=DynamicCache(config=model.config),
                          use_cache=True, logits_to_keep=1)
                t_kp = time.perf_counter() - t0
                if _:
                    times["full"].append(t_full)
                    times["tokensieve:default"].append(t_ts)
                    times["kvpress:tova"].append(t_kp)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"task": task, "length": length, "tokens": len(ctx),
                         "whole_spans": len(spans), "full_s": med["full"],
                         "x_tokensieve": med["tokensieve:default"] / med["full"],
                         "x_kvpress_tova": med["kvpress:tova"] / med["full"],
                         "peak_kv_fraction": peak / full_bytes})
            print(rows[-1])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prefill.json").write_text(json.dumps({"ratio": ratio, "rows": rows}, indent=1))
    lines = [f"# Prefill time over no compression (ratio {ratio}, bf16, median of {repeats})",
             "", "| task | tokens | number spans | full prefill s | tokensieve default | "
             "kvpress TOVA | tokensieve peak KV / full |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['tokens']} | {r['whole_spans']} | {r['full_s']:.2f} | "
                     f"{r['x_tokensieve']:.2f}x | {r['x_kvpress_tova']:.2f}x | "
                     f"{r['peak_kv_fraction']:.3f} |")
    (OUT / "prefill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
