"""Peak memory of a prefill and 32 greedy decode steps, uncompressed (transformers'
DynamicCache) and with ``kv.compress`` (tova / snapkv / adakv / h2o, keep 25%), at 4k and 16k
context tokens. Every configuration runs in a fresh process, so high-water marks of one run
cannot leak into the next.

    .venv/bin/python benchmarks/kv/decode_memory.py
    # -> benchmarks/kv/results/decode_memory.{json,md}

What is measured, per configuration:

- KV bytes held after the prefill and after the decode steps (``nbytes()``: keys and values
  held, per-head blocks' reserved room included), and the most KV bytes held at once during
  the prefill (``CompressedCache.peak_bytes``; the full cache for DynamicCache).
- Peak resident memory over the baseline (model loaded, input ready): the kernel's
  high-water mark (VmHWM, the same figure as ``ru_maxrss``) is reset through
  ``/proc/self/clear_refs`` right before the prefill and again right before the decode steps,
  so each phase reports its own peak. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536``:
  tensors are mmapped and their pages go back to the kernel when freed, so RSS follows what
  torch really holds instead of what glibc's heap keeps cached. Where clear_refs cannot be
  written, a thread samples VmRSS every millisecond instead (reported in ``rss_method``).

4k runs on SmolLM2-135M-Instruct (``load_causal_lm("default")``). SmolLM2 has 8192 positions,
so 16k runs on a llama with SmolLM2's shape (576 hidden, 9 query / 3 KV heads of 64, 1536 MLP,
49152 vocabulary) and random weights; ``--deep-layers`` sets its depth: 8 by default, so the
whole run stays near 10 minutes on 2 cores (30 layers, SmolLM2's depth, takes about 4 minutes
per 16k configuration there). KV bytes scale exactly with the number of layers; the rest of
the prefill peak (activations, attention scoring) is per layer and does not. The context is
CPython's pydoc text (real prose, the KV benchmark's fidelity text).

A method written ``METHOD/cN`` reads the context with chunked prefill
(``Session.prefill(ids, chunk=N)``: compress after each chunk of N tokens, so the cache
holds at most the budget plus one chunk); its decode steps start from the context's last
token.

``--src LABEL=PATH`` runs every configuration again with another copy of the library on
PYTHONPATH (e.g. ``git archive <commit> src`` unpacked somewhere), as extra rows labelled
LABEL; ``--skip-current`` leaves out the rows of the library this script imports.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"
SMOLLM_POSITIONS = 8192
MiB = 2 ** 20


# --- child: one configuration ----------------------------------------------------------------
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


class Peak:
    """High-water mark of this process's RSS from ``start()`` to ``stop()``."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.method = "VmRSS sampled every 1 ms"

    def start(self) -> int:
        gc.collect()
        self.peak, self.running = 0, True
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return _status()["VmRSS"]

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _status()["VmRSS"])
            time.sleep(0.001)

    def stop(self) -> int:
        if self.method.startswith("VmHWM"):
            return _status()["VmHWM"]
        self.running = False
        self.thread.join()
        return max(self.peak, _status()["VmRSS"])


def _model(length: int, decode: int, dtype: str, layers: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tokensieve.models import load_causal_lm, resolve_dtype, resolve_lm

    if length + decode <= SMOLLM_POSITIONS:
        lm = load_causal_lm("default", dtype=dtype)
        return lm.model, lm.tokenizer, "SmolLM2-135M-Instruct"
    from transformers import AutoTokenizer

    where, _ = resolve_lm("default")
    config = AutoConfig.from_pretrained(where, local_files_only=True)
    config.max_position_embeddings = length + decode + 64
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, "cpu"),
                                             attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
    return model, tok, f"random llama, SmolLM2 shape, {layers} layers"


def child(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    from transformers import DynamicCache

    from tokensieve import kv
    from tokensieve.bench.kv_bench import pydoc_text

    model, tok, model_name = _model(cfg["length"], cfg["decode"], cfg["dtype"], cfg["layers"])
    text = pydoc_text()[: cfg["length"] * 8]
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][: cfg["length"]]])
    assert ids.shape[1] == cfg["length"], ids.shape
    method, _, chunk = cfg["method"].partition("/c")
    peak = Peak()
    row = dict(cfg, model=model_name, dtype=str(model.dtype).removeprefix("torch."),
               layers=model.config.num_hidden_layers, rss_method=peak.method,
               library=str(Path(kv.__file__).parents[1]))

    def kv_bytes(cache) -> int:
        if isinstance(cache, kv.CompressedCache):
            return cache.nbytes()
        return sum(la.keys.nbytes + la.values.nbytes for la in cache.layers)

    with torch.no_grad():
        if method == "full":
            block = None
            cache = DynamicCache(config=model.config)
        else:
            block = kv.compress(model, method, keep=cfg["keep"])
            session = block.__enter__()
            cache = None
        try:
            base = peak.start()
            t0 = time.perf_counter()
            if chunk:
                cache = session.prefill(ids, chunk=int(chunk))
                out = None
            else:
                out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            row["prefill_s"] = time.perf_counter() - t0
            row["prefill_peak_rss"] = peak.stop() - base
            if out is not None:
                cache = out.past_key_values if block is None else session.last_cache
            row["kv_after_prefill"] = kv_bytes(cache)
            row["kv_peak_prefill"] = (cache.peak_bytes if block is not None
                                      else row["kv_after_prefill"])
            nxt = ids[:, -1:] if out is None else out.logits[:, -1:].argmax(-1)
            del out
            base2 = peak.start()
            row["rss_after_prefill"] = base2 - base
            t0 = time.perf_counter()
            for _ in range(cfg["decode"]):
                out = model(nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
                del out
            row["decode_ms_per_step"] = 1000 * (time.perf_counter() - t0) / cfg["decode"]
            row["decode_peak_rss"] = peak.stop() - base
            row["kv_after_decode"] = kv_bytes(cache)
            row["seen"] = cache.get_seq_length()
        finally:
            if block is not None:
                block.__exit__(None, None, None)
    return row


# --- parent: every configuration in its own process --------------------------------------------
def run(cfg: dict, src: str | None) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="passive", MALLOC_MMAP_THRESHOLD_="65536")
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall_s"] = time.perf_counter() - t0
    return row


def table(rows: list[dict]) -> str:
    def mib(v):
        return f"{v / MiB:,.1f}"

    full = {(r["length"], r.get("label")): r for r in rows if r["method"] == "full"}
    lines = [
        "| tokens | model | method | KV after prefill MiB | of full | peak KV in prefill MiB "
        "| KV after decode MiB | peak RSS prefill MiB | peak RSS decode MiB "
        "| decode over post-prefill RSS MiB | prefill s | decode ms/step |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = full.get((r["length"], r.get("label"))) or full.get((r["length"], None))
        share = f"{r['kv_after_prefill'] / ref['kv_after_prefill']:.3f}" if ref else "-"
        method = r["method"] + (f" ({r['label']})" if r.get("label") else "")
        lines.append(
            f"| {r['length']} | {r['model']} | {method} | {mib(r['kv_after_prefill'])} | {share} "
            f"| {mib(r['kv_peak_prefill'])} | {mib(r['kv_after_decode'])} "
            f"| {mib(r['prefill_peak_rss'])} | {mib(r['decode_peak_rss'])} "
            f"| {mib(r['decode_peak_rss'] - r['rss_after_prefill'])} "
            f"| {r['prefill_s']:.1f} | {r['decode_ms_per_step']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--methods", nargs="+", default=["full", "tova", "snapkv", "adakv", "h2o"])
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 where the CPU has it")
    p.add_argument("--deep-layers", type=int, default=8,
                   help="layers of the random SmolLM2-shaped model past 8192 tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--src", action="append", default=[], metavar="LABEL=PATH")
    p.add_argument("--skip-current", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="decode_memory", help="file name of the results")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    sources = [] if args.skip_current else [(None, None)]
    sources += [tuple(s.split("=", 1)) for s in args.src]
    rows, start = [], time.perf_counter()
    for length in args.lengths:
        for label, src in sources:
            for method in args.methods:
                cfg = dict(length=length, method=method, keep=args.keep, decode=args.decode,
                           dtype=args.dtype, layers=args.deep_layers, threads=args.threads)
                row = run(cfg, src)
                row["label"] = label
                rows.append(row)
                print(f"{length:>6} {method:<7} {label or '':<8} "
                      f"kv {row['kv_after_prefill'] / MiB:8.1f} MiB  "
                      f"peak kv {row['kv_peak_prefill'] / MiB:8.1f}  "
                      f"rss prefill {row['prefill_peak_rss'] / MiB:8.1f}  "
                      f"decode {row['decode_peak_rss'] / MiB:8.1f}  ({row['wall_s']:.0f}s)",
                      flush=True)
    total = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(keep=args.keep, decode_steps=args.decode, threads=args.threads,
                deep_layers=args.deep_layers, total_s=round(total, 1), sources=args.src,
                load_average=os.getloadavg())
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                            indent=1))
    note = (f"keep={args.keep}, {args.decode} greedy decode steps, {args.threads} threads, "
            f"one fresh process per row; RSS = peak resident memory over the baseline (model "
            f"loaded, input ready), {rows[0]['rss_method']}. Whole run {total / 60:.1f} min "
            f"(load average {os.getloadavg()[0]:.1f} at the end).")
    (args.out / f"{args.name}.md").write_text(
        f"# KV and process memory: prefill + decode\n\n{note}\n\n{table(rows)}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
