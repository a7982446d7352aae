"""Compression methods under test: tokensieve's variants, the random baseline, and the
anchors (LLMLingua, LongLLMLingua, Selective Context) run in their own venv through
``benchmarks/text/anchors/run_anchor.py``."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..text import compress
from .data import Item

REPO = Path(__file__).resolve().parents[3]
ANCHOR_DIR = REPO / "benchmarks" / "text" / "anchors"
ANCHOR_PYTHON = REPO / ".venv-anchors" / "bin" / "python"


@dataclass(frozen=True)
class Method:
    """A named compressor: tokensieve keyword arguments, or an anchor tool's name."""

    name: str
    kwargs: dict = field(default_factory=dict, hash=False)
    question_aware: bool = True
    anchor: str | None = None


TOKENSIEVE = {
    "tokensieve": Method("tokensieve"),
    "tokensieve-noq": Method("tokensieve-noq", question_aware=False),
    "ts-surprisal-word": Method("ts-surprisal-word", {"method": "surprisal",
                                                      "granularity": "word"}, False),
    "ts-question-aware-word": Method("ts-question-aware-word", {"method": "question-aware",
                                                                "granularity": "word"}),
    "ts-contrastive-word": Method("ts-contrastive-word", {"method": "contrastive",
                                                          "granularity": "word"}),
    "ts-encoder-sentence": Method("ts-encoder-sentence", {"method": "encoder",
                                                          "granularity": "sentence"}),
    "ts-bm25-sentence": Method("ts-bm25-sentence", {"method": "bm25", "granularity": "sentence"}),
    "ts-lexrank-sentence": Method("ts-lexrank-sentence", {"method": "lexrank",
                                                          "granularity": "sentence"}, False),
    "ts-wordfreq-word": Method("ts-wordfreq-word", {"method": "wordfreq",
                                                    "granularity": "word"}, False),
    "tokensieve-words": Method("tokensieve-words", {"finest": "word"}),
    "ts-learned": Method("ts-learned", {"method": "learned"}, False),
    # the question-free default before issue 21: LM surprisal, documents -> sentences -> words
    "ts-surprisal-auto": Method("ts-surprisal-auto", {"method": "surprisal"}, False),
    # the learned method's unit rules (words, names and numbers whole) on LM surprisal: what
    # the classifier itself adds
    "ts-surprisal-whole": Method("ts-surprisal-whole", {"method": "surprisal",
                                                        "granularity": "word",
                                                        "keep_names": True,
                                                        "keep_numbers": True}, False),
    "random-word": Method("random-word", {"method": "random", "granularity": "word"}, False),
    "random-sentence": Method("random-sentence", {"method": "random",
                                                  "granularity": "sentence"}, False),
}
ANCHORS = {
    "llmlingua": Method("llmlingua", question_aware=False, anchor="llmlingua"),
    "longllmlingua": Method("longllmlingua", anchor="longllmlingua"),
    "selective-context": Method("selective-context", question_aware=False,
                                anchor="selective-context"),
}
METHODS = {**TOKENSIEVE, **ANCHORS}
NOT_RUNNABLE = {
    "llmlingua-2": "its trained token classifier (microsoft/llmlingua-2-*) ships only on a model "
                   "hub, not on PyPI, so it cannot be loaded offline here",
}


def anchors_available() -> tuple[bool, str]:
    if not ANCHOR_PYTHON.exists():
        return False, "the anchors' venv is missing: run benchmarks/text/anchors/setup_anchors.sh"
    if not (ANCHOR_DIR / "run_anchor.py").exists():
        return False, f"{ANCHOR_DIR / 'run_anchor.py'} is missing"
    return True, ""


def run_tokensieve(method: Method, items: list[Item], targets: list[int], tokenizer,
                   seed: int = 0) -> list[dict]:
    out = []
    for item, target in zip(items, targets, strict=True):
        t = time.perf_counter()
        try:
            r = compress(item.documents, target_tokens=target, tokenizer=tokenizer, seed=seed,
                         question=item.question if method.question_aware else None,
                         progress=False, **method.kwargs)
            text, error = r.text, None
        except Exception as exc:  # recorded per item, reported in the table
            text, error = "", f"{type(exc).__name__}: {exc}"
        out.append({"compressed": text, "seconds": time.perf_counter() - t, "error": error})
    return out


def run_anchor(method: Method, items: list[Item], targets: list[int], context_tokens: list[int],
               model_dir: str, timeout: int = 7200) -> list[dict]:
    """All items of one anchor at one budget in one subprocess (its model loads once)."""
    ok, why = anchors_available()
    if not ok:
        return [{"compressed": "", "seconds": 0.0, "error": why} for _ in items]
    with tempfile.TemporaryDirectory() as tmp:
        req, res = Path(tmp) / "requests.jsonl", Path(tmp) / "results.jsonl"
        with req.open("w") as f:
            for item, target, n in zip(items, targets, context_tokens, strict=True):
                f.write(json.dumps({"id": item.id, "documents": item.documents,
                                    "question": item.question if method.question_aware else None,
                                    "target_tokens": target, "ratio": target / max(1, n)}) + "\n")
        proc = subprocess.run([str(ANCHOR_PYTHON), str(ANCHOR_DIR / "run_anchor.py"),
                               "--method", method.anchor, "--model-dir", model_dir,
                               "--requests", str(req), "--out", str(res)],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not res.exists():
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            return [{"compressed": "", "seconds": 0.0, "error": f"anchor failed: {why}"}
                    for _ in items]
        rows = {r["id"]: r for r in map(json.loads, res.read_text().splitlines())}
    return [{"compressed": rows.get(i.id, {}).get("compressed", ""),
             "seconds": rows.get(i.id, {}).get("seconds", 0.0),
             "error": rows.get(i.id, {"error": "missing"}).get("error")} for i in items]
