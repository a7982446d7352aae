"""How question-free compression scales with the input length: the learned classifier path
(MiniLM's first layers + a head) and the LM path (SmolLM2 surprisal, the question-free
default before issue 21) at 10k / 100k / 1M tokens, whole ``compress`` calls at keep 0.25,
in tokens/s (SmolLM2 tokens), with the scoring step's own rate and the peak resident memory.

The text is CPython's pydoc topics (real technical prose that ships with Python), repeated
to reach the length (repeats change nothing for a per-token scorer's speed).

    .venv/bin/python benchmarks/text_scaling.py                       # 10k, 100k, 1M
    .venv/bin/python benchmarks/text_scaling.py --lengths 10000 --lm-max 10000   # quick
    .venv/bin/python benchmarks/text_scaling.py --anchors llmlingua --anchor-max 10000

``--anchors``: the established compressors (``benchmarks/text/anchors/setup_anchors.sh``
builds their venv), timed in the same run on the same text and target, on SmolLM2 as every
method here; their seconds are the compression call alone (the model loads before).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from tokensieve import compress
from tokensieve.bench.data import Item
from tokensieve.bench.methods import ANCHORS, anchors_available, run_anchor
from tokensieve.models import converted_default_lm_dir, load_tokenizer

OUT = Path(__file__).parent / "results" / "text-scaling"


def pydoc_text(n_tokens: int, tokenizer) -> str:
    """pydoc topics, whole topics in sorted order, repeated until ``n_tokens`` tokens."""
    from pydoc_data.topics import topics

    bodies = [topics[k].strip() for k in sorted(topics)]
    counts = [len(ids) for ids in tokenizer(bodies, add_special_tokens=False)["input_ids"]]
    parts, total = [], 0
    while total < n_tokens:
        for body, c in zip(bodies, counts, strict=True):
            parts.append(body)
            total += c
            if total >= n_tokens:
                break
    return "\n\n".join(parts)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--lm-max", type=int, default=100_000,
                    help="longest input the LM path runs on (it is ~10x slower)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--anchors", nargs="*", default=[], choices=sorted(ANCHORS),
                    help="anchor compressors timed in the same run (their venv must exist)")
    ap.add_argument("--anchor-max", type=int, default=10_000,
                    help="longest input the anchors run on (LLMLingua is ~20x slower)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.anchors:
        ok, why = anchors_available()
        if not ok:
            ap.error(why)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer()
    compress("Warm up the models once, so loading is not timed. " * 20, keep=0.5,
             method="learned", progress=False)
    compress("Warm up the models once, so loading is not timed. " * 20, keep=0.5,
             progress=False)
    rows = []
    for n in args.lengths:
        text = pydoc_text(n, tok)
        for method in ("learned", "surprisal"):
            if method == "surprisal" and n > args.lm_max:
                continue
            t = time.perf_counter()
            r = compress(text, keep=0.25, method=method, progress=False)
            secs = time.perf_counter() - t
            score = r.timings.get("score_select", float("nan"))
            rows.append({"method": method, "tokens": r.original_tokens, "seconds": round(secs, 2),
                         "tokens_per_s": round(r.original_tokens / secs),
                         "score_select_s": round(score, 2),
                         "score_select_tokens_per_s": round(r.original_tokens / score),
                         "kept": r.compressed_tokens, "target": r.target_tokens,
                         "peak_rss_mib_so_far": round(peak_rss_mib())})
            print(rows[-1], flush=True)
        for name in args.anchors if n <= args.anchor_max else ():
            target = rows[-1]["target"]
            item = Item(f"scaling-{n}", "scaling", [text], "", "")
            t = time.perf_counter()
            (got,) = run_anchor(ANCHORS[name], [item], [target], [n],
                                str(converted_default_lm_dir()) + "-tf4")
            if got["error"]:
                raise SystemExit(f"{name} failed: {got['error']}")
            kept = len(tok(got["compressed"], add_special_tokens=False)["input_ids"])
            secs = got["seconds"]
            rows.append({"method": name, "tokens": rows[-1]["tokens"], "seconds": round(secs, 2),
                         "tokens_per_s": round(rows[-1]["tokens"] / secs),
                         "score_select_s": None, "score_select_tokens_per_s": "–",
                         "kept": kept, "target": target, "peak_rss_mib_so_far": "(own process)",
                         "process_seconds": round(time.perf_counter() - t, 1)})
            print(rows[-1], flush=True)
    base = {(r["method"], r["tokens"]): r["seconds"] for r in rows if r["method"] in args.anchors}
    for r in rows:
        if r["method"] not in args.anchors:
            r["faster_than"] = {a: round(base[(a, r["tokens"])] / r["seconds"], 1)
                                for a in args.anchors if (a, r["tokens"]) in base}
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Question-free compression at keep 0.25 of pydoc topics (repeated), "
             f"{args.threads} threads; tokens are SmolLM2 tokens; whole `compress` calls.", "",
             "| method | tokens | seconds | tokens/s | scoring + selection tokens/s | "
             "kept / target | peak RSS so far (MiB) |"
             + "".join(f" x faster than {a} (same run) |" for a in args.anchors),
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(args.anchors)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
                     f"{r['score_select_tokens_per_s']} | {r['kept']} / {r['target']} | "
                     f"{r['peak_rss_mib_so_far']} |"
                     + "".join(f" {r.get('faster_than', {}).get(a, '–')} |"
                               for a in args.anchors))
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
