"""The prompt-compression benchmark: every method at every ratio on the same items, read
by the same reader(s), measured in one run. Resumable: finished rows are appended to
``records.jsonl`` in the output folder and skipped when the run starts again.

    tokensieve bench text --quick            # < 10 minutes on 2 cores
    tokensieve bench text --items 20 --readers default gemma3-270m
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
from tqdm.auto import tqdm

from ..models import converted_default_lm_dir
from . import metrics
from .data import AVAILABLE_TASKS, TASKS, Item, build_tasks
from .methods import ANCHORS, METHODS, NOT_RUNNABLE, anchors_available, run_anchor, run_tokensieve
from .readers import Reader, build_prompt
from .report import write_report

QUICK = {"tasks": list(AVAILABLE_TASKS), "items": 2, "ratios": [0.5, 0.125],
         "methods": ["tokensieve", "tokensieve-noq", "random-word", "llmlingua",
                     "longllmlingua", "selective-context"], "readers": ["default"]}
FULL_METHODS = list(METHODS)


def _key(*parts) -> str:
    return "|".join(str(p) for p in parts)


class Run:
    """One benchmark run writing into ``out``; already finished rows are reused."""

    def __init__(self, out: Path, readers: list[str], anchor_model_dir: str) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.records_path = out / "records.jsonl"
        self.compressed_path = out / "compressed.jsonl"
        self.done = {r["key"]: r for r in self._load(self.records_path)}
        self.compressed = {r["key"]: r for r in self._load(self.compressed_path)}
        self.readers = {name: Reader(name) for name in readers}
        self.budget_reader = self.readers[readers[0]]
        self.anchor_model_dir = anchor_model_dir

    @staticmethod
    def _load(path: Path) -> list[dict]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _append(self, path: Path, row: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def compress_all(self, method_name: str, items: list[Item], ratio: float) -> list[dict]:
        """Compressed contexts for every item (cached), budgets in the first reader's tokens."""
        keys = [_key(i.task, i.id, method_name, ratio) for i in items]
        todo = [k for k in keys if k not in self.compressed]
        if todo:
            method = METHODS[method_name]
            pending = [i for i, k in zip(items, keys, strict=True) if k in todo]
            n_ctx = [self.budget_reader.count("\n\n".join(i.documents)) for i in pending]
            targets = [int(ratio * n) for n in n_ctx]
            if method.anchor:
                rows = run_anchor(method, pending, targets, n_ctx, self.anchor_model_dir)
            else:
                rows = run_tokensieve(method, pending, targets, self.budget_reader.tokenizer)
            for item, target, n, row in zip(pending, targets, n_ctx, rows, strict=True):
                row.update(key=_key(item.task, item.id, method_name, ratio), target=target,
                           context_tokens=n)
                self.compressed[row["key"]] = row
                self._append(self.compressed_path, row)
        return [self.compressed[k] for k in keys]

    def evaluate(self, reader_name: str, item: Item, method: str, ratio: float,
                 context: str, extra: dict) -> dict:
        key = _key(reader_name, item.task, item.id, method, ratio)
        if key in self.done:
            return self.done[key]
        reader = self.readers[reader_name]
        prompt = build_prompt(item.task, context, item.question)
        row = {"key": key, "reader": reader_name, "task": item.task, "item": item.id,
               "method": method, "ratio": ratio, **extra,
               "nll": reader.answer_nll(prompt, item.answer),
               "answer_tokens": max(1, reader.count(" " + item.answer)),
               "reader_tokens": reader.count(context)}
        if item.choices:
            row["correct"] = float(item.choices[reader.choose(prompt, item.choices)] == item.answer)
        else:
            pred = metrics.first_answer_line(reader.generate(prompt))
            row.update(prediction=pred, em=metrics.exact_match(pred, item.answer),
                       f1=metrics.f1(pred, item.answer),
                       contains=float(metrics.normalize(item.answer) in metrics.normalize(pred)))
        if method == "full":
            row["prefill_seconds"] = reader.prefill_seconds(prompt, repeats=2)
        self.done[key] = row
        self._append(self.records_path, row)
        return row


def run(tasks: list[str], n_items: int, ratios: list[float], methods: list[str],
        readers: list[str], out: Path, seed: int = 0, threads: int = 2,
        data: dict[str, list[Item]] | None = None) -> dict:
    """Run every method at every ratio on the tasks' items (``data`` overrides the built
    tasks, e.g. a tiny task in a smoke test) and write the report into ``out``."""
    torch.set_num_threads(threads)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    started = time.perf_counter()
    anchor_dir = str(converted_default_lm_dir()) + "-tf4"
    r = Run(out, readers, anchor_dir)
    if data is None:  # a task whose source is missing is skipped with a one-line message
        data = build_tasks(tasks, n_items, seed, skip_missing=True)
        if not data:
            raise SystemExit("tokensieve bench text: none of the tasks could be built (see the "
                             "messages above)")
        tasks = [t for t in tasks if t in data]
    total = sum(len(v) for v in data.values()) * (1 + len(ratios) * len(methods)) * len(readers)
    bar = tqdm(total=total, desc="bench text", unit="eval")
    for items in data.values():
        for item in items:  # the ceiling: no compression
            context = "\n\n".join(item.documents)
            for reader in readers:
                r.evaluate(reader, item, "full", 1.0, context, {"seconds": 0.0, "error": None})
                bar.update()
        for method in methods:
            for ratio in ratios:
                rows = r.compress_all(method, items, ratio)
                for item, comp in zip(items, rows, strict=True):
                    original = "\n\n".join(item.documents)
                    text = comp["compressed"]
                    extra = {"seconds": comp["seconds"], "error": comp["error"],
                             "target": comp["target"], "context_tokens": comp["context_tokens"],
                             "retained": metrics.answer_retained(text, item.answer),
                             "faithful": metrics.is_char_subsequence(text, original),
                             "altered_numbers": len(metrics.altered_numbers(text, original))}
                    for reader in readers:
                        r.evaluate(reader, item, method, ratio, text, extra)
                        bar.update()
    bar.close()
    ok, why = anchors_available()
    meta = {"tasks": tasks, "items_per_task": n_items, "ratios": ratios, "methods": methods,
            "readers": readers, "seed": seed, "threads": threads,
            "machine": platform.processor() or platform.machine(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "anchors": "ran" if ok else f"not run: {why}",
            "not_runnable": NOT_RUNNABLE,
            "anchor_adaptations": "see benchmarks/text/anchors/README.md"}
    rows = [row for row in r.done.values() if row["task"] in tasks and row["method"] in
            (*methods, "full") and row["reader"] in readers and (row["ratio"] in ratios or
                                                                 row["method"] == "full")]
    return write_report(rows, meta, out)


def report_only(out: Path) -> int:
    """Rebuild report.md / results.json / plots from ``records.jsonl`` (e.g. of a run that
    is still going or was stopped), listing what it covers."""
    rows = Run._load(out / "records.jsonl")
    if not rows:
        raise SystemExit(f"no records in {out}")
    methods = sorted({r["method"] for r in rows} - {"full"})
    ok, why = anchors_available()
    meta = {"tasks": sorted({r["task"] for r in rows}),
            "items_per_task": max(sum(1 for r in rows if r["method"] == "full" and r["task"] == t
                                      and r["reader"] == rows[0]["reader"])
                                  for t in {r["task"] for r in rows}),
            "ratios": sorted({r["ratio"] for r in rows if r["method"] != "full"}, reverse=True),
            "methods": methods, "readers": sorted({r["reader"] for r in rows}), "seed": 0,
            "threads": 2, "machine": platform.processor() or platform.machine(),
            "wall_seconds": "n/a (rebuilt from records)",
            "anchors": "ran" if ok else f"not run: {why}", "not_runnable": NOT_RUNNABLE}
    write_report(rows, meta, out)
    print((out / "report.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tokensieve bench text", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run, under 10 minutes")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                    help="tasks whose source is missing (the BIG-bench ones without the "
                    "archive) are skipped with a one-line message")
    ap.add_argument("--items", type=int, default=20, help="items per task")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.25, 0.125],
                    help="fractions of context tokens kept (0.5 = 2x)")
    ap.add_argument("--methods", nargs="+", default=FULL_METHODS, help=", ".join(METHODS))
    ap.add_argument("--readers", nargs="+", default=["default"],
                    help="reader models: default (SmolLM2), gemma3-270m, or a local folder")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/text"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-anchors", action="store_true", help="skip the anchor tools")
    ap.add_argument("--report-only", action="store_true",
                    help="only rebuild the report from the rows already in --out")
    args = ap.parse_args(argv)
    if args.report_only:
        return report_only(args.out)
    cfg = dict(tasks=args.tasks, items=args.items, ratios=args.ratios, methods=args.methods,
               readers=args.readers)
    if args.quick:
        cfg = dict(QUICK)
        if args.out == Path("benchmarks/results/text"):
            args.out = Path("benchmarks/results/text-quick")
    if args.no_anchors:
        cfg["methods"] = [m for m in cfg["methods"] if m not in ANCHORS]
    summary = run(cfg["tasks"], cfg["items"], cfg["ratios"], cfg["methods"], cfg["readers"],
                  args.out, args.seed, args.threads)
    print((args.out / "report.md").read_text())
    return 0 if summary else 1


if __name__ == "__main__":
    raise SystemExit(main())
