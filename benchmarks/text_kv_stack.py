"""Prompt compression x KV-cache compression at equal memory (issue 21, part 3).

For every item of the text benchmark's long-context QA tasks and every memory budget (the
KV bytes kept, over the full prompt's uncompressed cache), the budget is split between the
two stages on a log scale (:func:`tokensieve.stack.stage_keeps`): split 1 = prompt
compression only (tokensieve's question-aware default), 0 = KV compression only
(``tokensieve.kv``'s default policy, question-agnostic), 0.5 = the square root each. The
reader (SmolLM2) then reads the question and the gold answer teacher-forced from that
cache; the metric is the gold answer's NLL per token against the full prompt (ΔNLL,
paired over items), plus the memory actually stored and whether the answer string
survived the prompt stage.

    .venv/bin/python benchmarks/text_kv_stack.py --seed 1 --items 5 \
        --out benchmarks/results/text-kv-stack-dev
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tokensieve import compress, kv
from tokensieve.bench.data import build_tasks
from tokensieve.bench.metrics import answer_retained
from tokensieve.kv.api import _full_bytes, chat_parts, number_spans, sentence_spans
from tokensieve.models import load_causal_lm
from tokensieve.stack import prompt_target, stage_keeps

TASKS = ["wiki_cloze", "news_cloze", "needle_qa"]


@torch.inference_mode()
def answer_nll(model, tok, context: str, question: str, answer: str, kv_keep: float
               ) -> tuple[float, int]:
    """(gold answer NLL per token, KV bytes stored) reading ``context`` into a cache
    compressed to ``kv_keep`` before the question, then question + answer teacher-forced."""
    ctx_ids, q_ids = chat_parts(tok, context, question)
    ans = tok(answer, add_special_tokens=False)["input_ids"]
    rest = torch.tensor([q_ids + ans])
    if kv_keep < 1:
        with kv.compress(model, "default", kv_keep, whole=number_spans(tok, context, question),
                         units=sentence_spans(tok, context, question)) as s:
            model(torch.tensor([ctx_ids]), use_cache=True, logits_to_keep=1)
            cache = s.last_cache
            stored = cache.nbytes()
            logits = model(rest, past_key_values=cache, use_cache=True).logits[0]
    else:
        logits = model(torch.tensor([ctx_ids + q_ids + ans])).logits[0, len(ctx_ids):]
        stored = _full_bytes(model, len(ctx_ids))
    pred = logits[len(q_ids) - 1:-1].float().log_softmax(-1)
    nll = -pred.gather(1, torch.tensor(ans)[:, None]).mean()
    return float(nll), stored


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1, help="1: dev split, 0: the reported split")
    ap.add_argument("--items", type=int, default=12, help="items per task")
    ap.add_argument("--memories", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    ap.add_argument("--splits", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/text-kv-stack-dev"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_causal_lm("default", dtype="float32")
    model, tok = lm.model, lm.tokenizer
    data = build_tasks(TASKS, args.items, args.seed, skip_missing=True)
    items = [it for task in data.values() for it in task]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    for item in tqdm(items, desc="items"):
        full_text = "\n\n".join(item.documents)
        base_nll, full_bytes = answer_nll(model, tok, full_text, item.question, item.answer, 1.0)
        for memory in args.memories:
            for split in args.splits:
                p, k = stage_keeps(memory, split)
                text = full_text
                if p < 1:
                    target = prompt_target(tok, full_text, item.question, p)
                    text = compress(item.documents, target_tokens=target,
                                    question=item.question, tokenizer=tok, progress=False).text
                nll, stored = answer_nll(model, tok, text, item.question, item.answer, k)
                rows.append({"task": item.task, "item": item.id, "memory": memory,
                             "split": split, "prompt_keep": round(p, 4), "kv_keep": round(k, 4),
                             "nll": nll, "full_nll": base_nll, "delta_nll": nll - base_nll,
                             "stored_memory": stored / full_bytes,
                             "retained": answer_retained(text, item.answer)})
    summary = []
    for memory in args.memories:
        for split in args.splits:
            sel = [r for r in rows if r["memory"] == memory and r["split"] == split]
            d = np.array([r["delta_nll"] for r in sel])
            summary.append({"memory": memory, "split": split, "n": len(sel),
                            "delta_nll": float(d.mean()),
                            "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0,
                            "stored_memory": float(np.mean([r["stored_memory"] for r in sel])),
                            "retained": float(np.mean([r["retained"] for r in sel]))})
    meta = {"seed": args.seed, "items_per_task": args.items, "tasks": list(data),
            "memories": args.memories, "splits": args.splits, "threads": args.threads,
            "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
            "python": platform.python_version(), "reader": "SmolLM2-135M-Instruct, float32"}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                       "rows": rows}, indent=1) + "\n")
    lines = [f"Prompt x KV compression at equal memory: {len(items)} items ({', '.join(data)}), "
             f"seed {args.seed}; ΔNLL = gold-answer NLL per token minus the full prompt's "
             "(lower is better; ± paired s.e.); memory = KV bytes stored / full prompt's; "
             "split 1 = prompt compression only, 0 = KV compression only.", "",
             "| memory | split | prompt keep | KV keep | ΔNLL | stored memory | answer in prompt |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        p, k = stage_keeps(s["memory"], s["split"])
        lines.append(f"| {s['memory']:g} | {s['split']:g} | {p:.3f} | {k:.3f} | "
                     f"{s['delta_nll']:+.3f} ± {s['se']:.3f} | {s['stored_memory']:.3f} | "
                     f"{s['retained']:.2f} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    plot(summary, args.splits, args.out / "frontier.png")
    print("\n".join(lines))


def plot(summary: list[dict], splits: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for split in splits:
        pts = sorted((s["stored_memory"], s["delta_nll"], s["se"]) for s in summary
                     if s["split"] == split)
        label = {0.0: "KV only", 1.0: "prompt only"}.get(split, f"split {split:g}")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV memory kept (fraction of the full prompt's)")
    ax.set_ylabel("ΔNLL of the gold answer (nats/token)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
