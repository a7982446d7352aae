"""Compressor throughput per method on real text (CPython's pydoc topics), in tokens/s and
as a ratio to one plain forward pass (prefill) of the scoring model over the same text,
measured in the same run. Writes JSON and a Markdown table to benchmarks/results/.

    .venv/bin/python benchmarks/throughput.py [--tokens 4000] [--repeats 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tokensieve import compress
from tokensieve.models import load_causal_lm, load_encoder, load_tokenizer
from tokensieve.scoring.surprisal import text_surprisal

OUT = Path(__file__).parent / "results"
QUESTION = "What does the while statement do when the expression is false?"


def corpus(n_tokens: int, tokenizer) -> str:
    """Paragraphs of pydoc topics (ships with CPython) up to about ``n_tokens`` tokens."""
    from pydoc_data.topics import topics

    parts, total = [], 0
    for key in sorted(topics):
        body = topics[key].strip()
        parts.append(body)
        total += len(tokenizer(body, add_special_tokens=False)["input_ids"])
        if total >= n_tokens:
            break
    return "\n\n".join(parts)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    load_tokenizer()
    tok_load = time.perf_counter() - t
    lm = load_causal_lm(dtype="auto")
    load_encoder()
    text = corpus(args.tokens, lm.tokenizer)
    n = len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefill() -> None:  # the reader's cost of simply reading the full prompt once
        text_surprisal(lm.model, lm.tokenizer, text, window=1024, progress=False)

    prefill()  # warm up
    base = best_time(prefill, args.repeats)
    rows = []
    runs = [("default", None, "auto"), ("default", QUESTION, "auto"),
            ("surprisal", None, "word"), ("surprisal", None, "sentence"),
            ("question-aware", QUESTION, "word"), ("contrastive", QUESTION, "word"),
            ("encoder", QUESTION, "sentence"), ("bm25", QUESTION, "sentence"),
            ("lexrank", None, "sentence"), ("wordfreq", None, "word"), ("learned", None, "auto"),
            ("learned", None, "word"), ("random", None, "word")]
    for method, question, gran in runs:
        def once(method=method, question=question, gran=gran):
            return compress(text, keep=0.33, question=question, method=method,
                            granularity=gran, progress=False)

        r = once()
        secs = best_time(once, args.repeats)
        rows.append({"method": method, "question": question is not None, "granularity": gran,
                     "tokens": n, "kept_tokens": r.compressed_tokens, "target": r.target_tokens,
                     "seconds": round(secs, 3), "tokens_per_s": round(n / secs),
                     "x_prefill": round(secs / base, 3)})
        print(rows[-1], flush=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "model_dtype": lm.info.get("dtype"), "text_tokens": n,
              "prefill_seconds": round(base, 3), "prefill_tokens_per_s": round(n / base),
              "tokenizer_load_seconds": round(tok_load, 3), "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "throughput.json").write_text(json.dumps(result, indent=2))
    lines = [f"Text: {n} tokens of pydoc topics; ratio 0.33; {args.threads} threads; scoring "
             f"model dtype {result['model_dtype']}; one prefill = {base:.2f}s "
             f"({result['prefill_tokens_per_s']} tok/s). Best of {args.repeats}.", "",
             "| method | question | granularity | tokens/s | time / prefill | kept / target |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {'yes' if r['question'] else 'no'} | {r['granularity']} "
                     f"| {r['tokens_per_s']} | {r['x_prefill']:.2f} | "
                     f"{r['kept_tokens']} / {r['target']} |")
    (OUT / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
