"""Train the learned keep-classifier of :mod:`tokensieve.text.classifier`: labels distilled
here from the project's own question-aware signal, no hosted model.

Passages: the Wikipedia paragraphs and ABC news articles of :mod:`.corpora` whose source
(article) no text-benchmark item uses, as gold or distractor, for seeds 0 and 1 at up to
20 items per task: the classifier never sees a benchmark document. 15% of the sources are
held out to validate.

Labels, per word of a passage, from SmolLM2:

- the questions: up to ``questions`` cloze questions about the passage (a sentence with a
  name or number blanked, as :func:`.data.cloze_candidates` finds them);
- the score: question-aware surprisal averaged over those questions, i.e. the surprisal after
  a neutral question plus the mean reduction the real questions bring
  (s(w | neutral) + mean_q [s(w | neutral) - s(w | q)]), as a percentile within the passage;
- the answers of every cloze candidate of the passage (what a reader must find to answer)
  get the top label, 1.

The head is a 2-layer MLP on the token states of MiniLM's first ``layers`` layers, fit by
mean squared error to the label of the word each token starts in.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..scoring.segment import find_words
from ..scoring.surprisal import NEUTRAL_QUESTION, text_surprisal
from ..scoring.units import span_scores
from ..text import classifier
from . import data as bench_data
from .store import data_dir

BENCH_SEEDS = (0, 1)
BENCH_ITEMS = (8, 20)
VALID_SHARE = 0.15


def benchmark_documents() -> set[str]:
    """Every document a text-benchmark cloze item uses (seeds 0 and 1, up to 20 items)."""
    used: set[str] = set()
    for task, pool in (("wiki_cloze", bench_data.wiki_pool()),
                       ("news_cloze", bench_data.news_pool())):
        for seed in BENCH_SEEDS:
            for n in BENCH_ITEMS:
                rng = random.Random(f"{task}:{seed}")
                for item in bench_data.build_cloze(rng, pool, task, n, 6):
                    used.update(item.documents)
    return used


def training_passages() -> list[dict]:
    """Passages whose source no benchmark item touches: [{source, text}], in corpus order."""
    used_docs = benchmark_documents()
    out = []
    for corpus, pool in (("wiki", bench_data.wiki_pool()), ("news", bench_data.news_pool())):
        used_sources = {src for src, doc in pool if doc in used_docs}
        out += [{"source": f"{corpus}:{src}", "text": doc} for src, doc in pool
                if src not in used_sources]
    return out


def word_labels(model, tokenizer, text: str, *, questions: int, rng: random.Random
                ) -> dict:
    """Word spans and their labels in [0, 1] (see the module docstring)."""
    words = np.array(find_words(text), dtype=np.int64).reshape(-1, 2)

    def per_word(prefix: str) -> np.ndarray:
        ts = text_surprisal(model, tokenizer, text, prefix=prefix, progress=False)
        return ts.aggregate(words, "sum")

    neutral = per_word(f"Question: {NEUTRAL_QUESTION}\n\n")
    cands = bench_data.cloze_candidates(text)
    by_sentence: dict[str, str] = {}
    for sentence, answer in cands:
        by_sentence.setdefault(sentence, answer)
    chosen = rng.sample(sorted(by_sentence), min(questions, len(by_sentence)))
    reduction = np.zeros(len(words))
    for sentence in chosen:
        q = bench_data.CLOZE_QUESTION.format(sentence.replace(by_sentence[sentence], "____", 1))
        reduction += neutral - per_word(f"Question: {q}\n\n")
    score = neutral + (reduction / len(chosen) if chosen else 0.0)
    order = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    label = order / max(1, len(words) - 1)
    answer_words = np.zeros(len(words), bool)
    for _, answer in cands:
        at = text.find(answer)
        if at >= 0:
            answer_words |= (words[:, 0] < at + len(answer)) & (words[:, 1] > at)
    label[answer_words] = 1.0
    return {"words": words.tolist(), "label": label.round(4).tolist(),
            "answers": answer_words.tolist(), "questions": len(chosen)}


def build_labels(passages: list[dict], *, questions: int, seed: int, cache: Path,
                 progress: bool = True) -> list[dict]:
    """Labels of every passage (cached in ``cache`` as JSON lines, resumable)."""
    from ..models import load_causal_lm

    done = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["text"]] = row
    todo = [p for p in passages if p["text"] not in done]
    if todo:
        loaded = load_causal_lm("default")
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a") as fh:
            for p in tqdm(todo, desc="labels", disable=not progress):
                rng = random.Random(f"{seed}:{p['source']}:{len(p['text'])}")
                row = {**p, **word_labels(loaded.model, loaded.tokenizer, p["text"],
                                          questions=questions, rng=rng)}
                done[p["text"]] = row
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return [done[p["text"]] for p in passages]


def token_targets(row: dict, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder states, target) of the tokens of one labelled passage that start in a word."""
    offsets, states = classifier.token_states(row["text"], layers)
    starts = offsets[:, 0]
    words = np.asarray(row["words"], dtype=np.int64).reshape(-1, 2)
    idx = np.searchsorted(words[:, 0], starts, side="right") - 1
    inside = (idx >= 0) & (starts < words[np.clip(idx, 0, None), 1])
    label = np.asarray(row["label"])[np.clip(idx, 0, None)]
    sel = torch.from_numpy(np.flatnonzero(inside))
    return states[sel], torch.from_numpy(label[inside]).float()


def split_sources(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    sources = sorted({r["source"] for r in rows})
    random.Random(seed).shuffle(sources)
    valid = set(sources[:max(1, int(VALID_SHARE * len(sources)))])
    return ([r for r in rows if r["source"] not in valid],
            [r for r in rows if r["source"] in valid])


def fit_head(x: torch.Tensor, y: torch.Tensor, *, hidden: int, epochs: int, seed: int,
             lr: float = 2e-3, batch: int = 1024) -> tuple[classifier.KeepHead, list[float]]:
    torch.manual_seed(seed)
    head = classifier.KeepHead(x.shape[1], hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch):
            sel = perm[i:i + batch]
            loss = torch.nn.functional.mse_loss(head(x[sel]), y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(sel)
        curve.append(round(total / len(x), 5))
    return head.eval(), curve


def answer_recall(rows: list[dict], word_scores: list[np.ndarray], keep: float) -> float:
    """Share of answer words that rank in the top ``keep`` of their passage's words."""
    hit = total = 0
    for row, s in zip(rows, word_scores, strict=True):
        answers = np.asarray(row["answers"], bool)
        if not answers.any():
            continue
        k = max(1, int(keep * len(s)))
        top = np.zeros(len(s), bool)
        top[np.argsort(-s, kind="stable")[:k]] = True
        hit += int((top & answers).sum())
        total += int(answers.sum())
    return hit / total if total else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def evaluate(rows: list[dict], head: classifier.KeepHead, layers: int) -> dict:
    """On held-out passages: rank correlation with the labels, and how many answer words the
    top 25% / 50% of words hold, for the head and for plain surprisal (the current default)."""
    from ..models import load_causal_lm

    lm = load_causal_lm("default")
    learned, surprisal, rho = [], [], []
    with torch.inference_mode():
        for row in rows:
            words = np.asarray(row["words"], dtype=np.int64).reshape(-1, 2)
            offsets, states = classifier.token_states(row["text"], layers)
            starts = offsets[:, 0]
            s = span_scores(head(states).double().numpy(), starts, words, "max")[0]
            learned.append(s)
            rho.append(spearman(s, np.asarray(row["label"])))
            ts = text_surprisal(lm.model, lm.tokenizer, row["text"], progress=False)
            surprisal.append(ts.aggregate(words, "sum"))
    return {"passages": len(rows), "spearman": round(float(np.nanmean(rho)), 4),
            **{f"answer_recall@{k}": {"learned": round(answer_recall(rows, learned, k), 4),
                                      "surprisal": round(answer_recall(rows, surprisal, k), 4)}
               for k in (0.25, 0.5)}}


def train(out: Path, *, layers: int = 3, hidden: int = 128, epochs: int = 10,
          questions: int = 3, seed: int = 0, progress: bool = True) -> dict:
    """Label, fit, validate and save the head into ``out``; returns the record."""
    from safetensors.torch import save_file

    t0 = time.time()
    passages = training_passages()
    rows = build_labels(passages, questions=questions, seed=seed, progress=progress,
                        cache=data_dir() / "text-classifier" / f"labels-q{questions}-s{seed}.jsonl")
    fit_rows, valid_rows = split_sources(rows, seed)
    xs, ys = zip(*(token_targets(r, layers) for r in tqdm(fit_rows, desc="features",
                                                        disable=not progress)), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    head, curve = fit_head(x, y, hidden=hidden, epochs=epochs, seed=seed)
    record = {
        "what": "keep-classifier head on all-MiniLM-L6-v2's first layers (tokensieve)",
        "layers": layers, "dim": int(x.shape[1]), "hidden": hidden, "epochs": epochs,
        "questions_per_passage": questions, "seed": seed,
        "passages": {"fit": len(fit_rows), "valid": len(valid_rows),
                     "sources_fit": len({r["source"] for r in fit_rows}),
                     "sources_valid": len({r["source"] for r in valid_rows})},
        "tokens_fit": int(len(x)), "loss_curve": curve,
        "valid": evaluate(valid_rows, head, layers),
        "excluded": "every document of the text benchmark's cloze items, seeds "
                    f"{list(BENCH_SEEDS)}, up to {max(BENCH_ITEMS)} items per task, by source",
        "seconds": round(time.time() - t0, 1),
        "command": f"tokensieve text-classifier train --layers {layers} --hidden {hidden} "
                   f"--epochs {epochs} --questions {questions} --seed {seed}",
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()},
              str(out / f"{classifier.HEAD_NAME}.safetensors"))
    (out / f"{classifier.HEAD_NAME}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
