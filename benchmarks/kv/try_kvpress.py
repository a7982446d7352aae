"""Sanity run of kvpress presses on the default model (SmolLM2-135M-Instruct): two
``niah_filler`` items at 1024 tokens, each press at one compression ratio, answers, scores,
KV bytes and timings printed.

    .venv/bin/python benchmarks/kv/try_kvpress.py [--ratio 0.5] [--presses snapkv,knorm]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import time

import torch

from tokensieve.bench.kv_press import KVPRESS_PRESSES, kvpress_answer
from tokensieve.bench.kv_tasks import make_tasks
from tokensieve.models import load_causal_lm

DEFAULT_PRESSES = ("no_press", "streaming_llm", "snapkv", "knorm", "expected_attention",
                   "pyramidkv", "adakv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--task", default="niah_filler")
    parser.add_argument("--presses", default=",".join(DEFAULT_PRESSES),
                        help=f"comma-separated, from no_press,{','.join(KVPRESS_PRESSES)}")
    args = parser.parse_args()
    torch.set_num_threads(2)

    lm = load_causal_lm("default")
    items = make_tasks(lm.tokenizer, lengths=(args.length,), n_items=args.items,
                       tasks=[args.task])
    print(f"model {lm.name} ({lm.source}), {len(items)} {args.task} items at {args.length} "
          f"tokens, ratio {args.ratio}")
    for name in args.presses.split(","):
        scores, prefill, decode, tokens = [], 0.0, 0.0, 0
        start = time.perf_counter()
        for item in items:
            out = kvpress_answer(lm.model, lm.tokenizer, name, args.ratio, item.context,
                                 [item.question], item.max_new_tokens)
            answer = out["answers"][0]
            scores.append(item.score(answer))
            prefill += out["prefill_s"]
            decode += out["decode_s"]
            tokens += out["tokens_generated"]
            kv = (f"kv {out['kv_bytes'] / 2**20:.1f}/{out['kv_bytes_full'] / 2**20:.1f} MiB"
                  + (f" (effective {out['kv_bytes_effective'] / 2**20:.1f})"
                     if out["kv_bytes_effective"] != out["kv_bytes"] else ""))
            print(f"  {name:<19} {item.id:<18} score {scores[-1]:.2f}  {kv}  "
                  f"gold {item.answers[0]}  answer {answer.strip()!r}")
        print(f"{name:<19} mean score {sum(scores) / len(scores):.2f}  prefill {prefill:.2f}s  "
              f"decode {decode:.2f}s for {tokens} tokens  total {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    main()
