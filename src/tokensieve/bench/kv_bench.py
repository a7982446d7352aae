"""The KV-cache benchmark: tokensieve's policies and kvpress's presses on the same model, the
same locally generated long-context items and the same prompts, in one run. Resumable:
finished rows are appended to ``records.jsonl`` in the output folder.

    tokensieve bench kv --quick                     # 3.3 minutes on 2 cores (measured)
    tokensieve bench kv --lengths 1024 2048 4096 --items 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import copy
import json
import platform
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import kv
from ..models import load_causal_lm
from .kv_report import write_report
from .kv_tasks import TASKS, KVItem, make_tasks

KEEPS = (0.5, 0.25)
TS_POLICIES = tuple(kv.POLICIES)
KVPRESS = ("streaming_llm", "snapkv", "tova", "knorm", "expected_attention", "pyramidkv",
           "chunkkv", "adakv", "observed_attention", "random", "keydiff", "kvzip")
QUICK = {"tasks": ["code_essay", "multifact"], "lengths": [1024], "items": 2,
         "keeps": [0.25],
         "methods": ["tokensieve:default", "kvpress:tova", "kvpress:snapkv",
                     "kvpress:expected_attention", "tokensieve:random"]}


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms in a thread."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _kv_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    total = 0
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            total += layer.keys.nbytes + layer.values.nbytes
    return total


@torch.no_grad()
def run_full(model, tok, item: KVItem) -> dict:
    """No compression: plain transformers, same prompt split as the compressed runs; the
    context is prefilled once and every question answered from a copy of its cache."""
    from transformers import DynamicCache

    ctx, _ = kv.chat_parts(tok, item.context, item.questions[0])
    dev = model.device
    ids = torch.tensor([ctx], device=dev)
    t0 = time.perf_counter()
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - t0
    stored = _kv_bytes(cache)
    answers, decode = [], 0.0
    for question in item.questions:
        _, q = kv.chat_parts(tok, item.context, question)
        full_ids = torch.tensor([ctx + q], device=dev)
        t0 = time.perf_counter()
        out = model.generate(full_ids, attention_mask=torch.ones_like(full_ids),
                             past_key_values=copy.deepcopy(cache), do_sample=False,
                             max_new_tokens=item.max_new_tokens)
        decode += time.perf_counter() - t0
        answers.append(tok.decode(out[0, full_ids.shape[1]:], skip_special_tokens=True))
    return {"answers": answers, "stored_bytes": stored, "prefill_seconds": prefill,
            "decode_seconds": decode}


def run_tokensieve(model, tok, item: KVItem, policy: str, keep: float,
                   query_aware: bool = False, chunk: int | None = None) -> dict:
    res = kv.answer(model, tok, item.context, item.questions, policy=policy, keep=keep,
                    max_new_tokens=item.max_new_tokens, query_aware=query_aware, chunk=chunk)
    return {"answers": res.answers, "stored_bytes": res.stored_bytes,
            "prefill_seconds": res.prefill_seconds, "decode_seconds": res.decode_seconds}


def run_kvpress(model, tok, item: KVItem, press: str, keep: float) -> dict:
    from .kv_press import kvpress_answer

    # kvpress's compression_ratio is the fraction removed
    res = kvpress_answer(model, tok, press, 1 - keep, item.context, item.questions,
                         item.max_new_tokens, question_prefix="\n\n")
    return {"answers": res["answers"], "stored_bytes": res["kv_bytes"],
            "effective_bytes": res["kv_bytes_effective"], "kv_context_tokens":
            res["context_tokens"], "prefill_seconds": res["prefill_s"],
            "decode_seconds": res["decode_s"]}


def run_method(model, tok, item: KVItem, method: str, keep: float) -> dict:
    family, _, name = method.partition(":")
    if method == "full":
        return run_full(model, tok, item)
    if family == "tokensieve":
        aware = name.endswith("+q")
        name, _, chunk = name.removesuffix("+q").partition("/c")  # policy/c512: chunked prefill
        if chunk and not chunk.isdigit():
            raise SystemExit(f"bad chunk in {method!r}: write tokensieve:<policy>/c<tokens>")
        return run_tokensieve(model, tok, item, name, keep, aware, int(chunk) if chunk else None)
    if family == "kvpress":
        return run_kvpress(model, tok, item, name, keep)
    raise SystemExit(f"unknown method {method!r}: use full, tokensieve:<policy>[+q], "
                     f"tokensieve:<policy>/c<chunk tokens> or kvpress:<press>")


def kvpress_prefill(model, press_name: str, keep: float, ctx: torch.Tensor):
    """Prefill ``ctx`` under a kvpress press (its forward hooks prune the cache)."""
    from transformers import DynamicCache

    from .kv_press import attn_implementation, make_press

    press = make_press(press_name, 1 - keep)  # kvpress counts the fraction removed
    cache = DynamicCache(config=model.config)
    impl = "eager" if press_name == "observed_attention" else model.config._attn_implementation
    with attn_implementation(model, impl):
        if press is None:
            out = model(ctx, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                out = model(ctx, past_key_values=cache, use_cache=True)
    return cache, out


# --- fidelity on real text ----------------------------------------------------------------
def pydoc_text() -> str:
    """Real technical prose that ships with CPython (the help() topics)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


_PYDOC_IDS: dict[int, list[int]] = {}


def _pydoc_ids(tok) -> list[int]:
    """The pydoc text tokenised once per tokenizer (it is ~1 MB)."""
    if id(tok) not in _PYDOC_IDS:
        _PYDOC_IDS[id(tok)] = tok(pydoc_text(), add_special_tokens=False)["input_ids"]
    return _PYDOC_IDS[id(tok)]


@torch.no_grad()
def fidelity(model, tok, method: str, keep: float, context_tokens: int, cont_tokens: int = 128,
             offset: int = 0) -> dict:
    """Teacher-forced KL(full || compressed) and top-1 agreement over ``cont_tokens`` tokens
    that follow a compressed context of ``context_tokens`` pydoc tokens."""
    ids = _pydoc_ids(tok)[offset: offset + context_tokens + cont_tokens]
    dev = model.device
    ctx = torch.tensor([ids[:context_tokens]], device=dev)
    cont = torch.tensor([ids[context_tokens:]], device=dev)
    full = model(torch.tensor([ids], device=dev)).logits[0, context_tokens - 1: -1].float()
    family, _, name = method.partition(":")
    if family == "tokensieve":
        with kv.compress(model, name, keep) as s:
            out = model(ctx, use_cache=True)
            cache = s.last_cache
            rest = model(cont, past_key_values=cache, use_cache=True).logits[0]
    else:
        from .kv_press import _attention_modules, _cleanup

        modules = _attention_modules(model)
        had = ["rotary_emb" in m._modules for m in modules]
        try:
            cache, out = kvpress_prefill(model, name, keep, ctx)
            # kvpress's cache counts stored entries, so positions are passed explicitly, as
            # its own pipeline does for the question (true positions, gaps where pruned)
            pos = torch.arange(context_tokens, context_tokens + cont.shape[1], device=dev)[None]
            lengths = {layer.keys.shape[-2] for layer in cache.layers}
            if len(lengths) == 1:
                rest = model(cont, past_key_values=cache, position_ids=pos,
                             use_cache=True).logits[0]
            else:  # per-layer lengths: kvpress's shared mask breaks; one token at a time
                rest = torch.cat([model(cont[:, i:i + 1], past_key_values=cache,
                                        position_ids=pos[:, i:i + 1], use_cache=True).logits[0]
                                  for i in range(cont.shape[1])])
        finally:  # AdaKV's masked keys stay set on the modules until the continuation is done
            _cleanup(modules, had)
    comp = torch.cat([out.logits[0, -1:], rest[:-1]]).float()
    logp, logq = full.log_softmax(-1), comp.log_softmax(-1)
    klv = (logp.exp() * (logp - logq)).sum(-1)
    return {"kl": float(klv.mean()), "top1": float((full.argmax(-1) == comp.argmax(-1))
                                                   .float().mean())}


# --- the run ------------------------------------------------------------------------------
class Run:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "records.jsonl"
        self.done = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.done[row["key"]] = row

    def add(self, row: dict) -> dict:
        self.done[row["key"]] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def evaluate(run: Run, model, tok, item: KVItem, method: str, keep: float) -> dict:
    key = f"{item.id}|{method}|{keep}"
    if key in run.done:
        return run.done[key]
    row = {"key": key, "kind": "task", "task": item.task, "length": item.length,
           "item": item.id, "method": method, "keep": keep, "questions": len(item.questions),
           "context_tokens": item.context_tokens, "error": None}
    try:
        with PeakRSS() as mem:
            res = run_method(model, tok, item, method, keep)
        row.update(res, peak_mb=mem.mb, score=item.score_answers(res["answers"]),
                   question_scores=item.question_scores(res["answers"]),
                   kinds=item.meta.get("kinds"))
    except Exception as exc:  # a tool that fails on an item is reported, not hidden
        row.update(error=f"{type(exc).__name__}: {exc}"[:300], score=0.0)
    return run.add(row)


def evaluate_fidelity(run: Run, model, tok, method: str, keep: float, length: int) -> dict:
    key = f"fidelity-{length}|{method}|{keep}"
    if key in run.done:
        return run.done[key]
    row = {"key": key, "kind": "fidelity", "length": length, "method": method, "keep": keep,
           "error": None}
    try:
        row.update(fidelity(model, tok, method, keep, length))
    except Exception as exc:
        row.update(error=f"{type(exc).__name__}: {exc}"[:300])
    return run.add(row)


def run_bench(tasks, lengths, n_items, keeps, methods, out: Path, model_name="default",
              seed=0, threads=2, fidelity_length=2048, dtype="float32",
              device="cpu") -> dict:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    kvpress_note = "not requested"
    if any(m.startswith("kvpress:") for m in methods):
        try:  # imported up front: kvpress wraps transformers' attention functions process-wide,
            import kvpress  # noqa: F401  so every method runs under the same wrappers

            kvpress_note = "kvpress 0.5.5, same process, same model and token ids"
        except ImportError:
            kvpress_note = "not installed (pip install -e .[kvpress]); kvpress rows skipped"
            print(f"bench kv: kvpress is {kvpress_note}")
            methods = [m for m in methods if not m.startswith("kvpress:")]
    lm = load_causal_lm(model_name, dtype=dtype, device=device)
    model, tok = lm.model, lm.tokenizer
    items = make_tasks(tok, lengths=lengths, n_items=n_items, seed=seed, tasks=tasks)
    run = Run(out)
    fid = fidelity_length > 0
    bar = tqdm(total=len(items) * (1 + len(keeps) * len(methods)) +
               fid * len(keeps) * len(methods), desc="bench kv", unit="run")
    for item in items:
        evaluate(run, model, tok, item, "full", 1.0)
        bar.update()
        for keep in keeps:
            for method in methods:
                evaluate(run, model, tok, item, method, keep)
                bar.update()
    for keep in keeps if fid else ():
        for method in methods:
            if not method.endswith("+q"):
                evaluate_fidelity(run, model, tok, method, keep, fidelity_length)
            bar.update()
    bar.close()
    meta = {"model": model_name, "tasks": list(tasks), "lengths": list(lengths),
            "items": n_items, "keeps": list(keeps), "methods": list(methods), "seed": seed,
            "threads": threads, "dtype": str(model.dtype).removeprefix("torch."),
            "attn": model.config._attn_implementation, "fidelity_context": fidelity_length,
            "machine": platform.processor() or platform.machine(),
            "default_policy": kv.DEFAULT_POLICY, "kvpress": kvpress_note,
            "wall_seconds": round(time.perf_counter() - started, 1)}
    keys = {f"{i.id}|{m}|{k}" for i in items for m in methods for k in keeps}
    keys |= {f"{i.id}|full|1.0" for i in items}
    keys |= {f"fidelity-{fidelity_length}|{m}|{k}" for m in methods for k in keeps}
    rows = [row for k, row in run.done.items() if k in keys]
    return write_report(rows, meta, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tokensieve bench kv", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (3 tasks, 1k tokens)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096])
    ap.add_argument("--items", type=int, default=2, help="items per task and length")
    ap.add_argument("--keep", nargs="+", type=float, default=list(KEEPS), dest="keeps",
                    help="fractions of the context's KV kept (1.0 = everything)")
    ap.add_argument("--ratios", nargs="+", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--methods", nargs="+",
                    default=[f"tokensieve:{p}" for p in ("default", "default+q", "snapkv",
                                                         "streaming_llm", "random")]
                    + [f"kvpress:{p}" for p in KVPRESS],
                    help="full, tokensieve:<policy>[+q] (policies: default, "
                         f"{', '.join(TS_POLICIES)}), kvpress:<press> ({', '.join(KVPRESS)})")
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is present")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="auto: bfloat16 where the CPU has native bf16 (2.5x faster here)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kv"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fidelity-length", type=int, default=2048,
                    help="context tokens of the teacher-forced fidelity rows (0: skip them)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.ratios:
        ap.error("--ratios (the fraction removed) is now --keep (the fraction kept): "
                 f"--keep {' '.join(f'{1 - r:g}' for r in args.ratios)}")
    if args.report_only:
        run = Run(args.out)
        meta = json.loads((args.out / "results.json").read_text())["meta"] \
            if (args.out / "results.json").exists() else {}
        write_report(list(run.done.values()), meta, args.out)
        print((args.out / "report.md").read_text())
        return 0
    cfg = dict(tasks=args.tasks, lengths=args.lengths, n_items=args.items, keeps=args.keeps,
               methods=args.methods)
    if args.quick:
        cfg = dict(tasks=QUICK["tasks"], lengths=QUICK["lengths"], n_items=QUICK["items"],
                   keeps=QUICK["keeps"], methods=QUICK["methods"])
        if args.out == Path("benchmarks/results/kv"):
            args.out = Path("benchmarks/results/kv-quick")
    summary = run_bench(out=args.out, model_name=args.model, seed=args.seed,
                        threads=args.threads, fidelity_length=args.fidelity_length,
                        dtype=args.dtype, device=args.device, **cfg)
    print((args.out / "report.md").read_text())
    return 0 if summary else 1


if __name__ == "__main__":
    raise SystemExit(main())
