"""The SFT benchmark (experiment 2 of token-selective training): fine-tune SmolLM2-135M-Instruct
on the quiz SFT set with all its data and with each pruning method at about 25% and 50% of the
training tokens, then score the held-out tasks.

Data: :mod:`tokensieve.bench.sft_data` (the BSD games' quiz files, Debian bsdgames; tasks split
by group into train and held-out, so the held-out tasks are question types never trained on).
The first ``train_examples`` of the seeded train order are the pool every run draws from; the
loss is on the answer tokens only (the option and ``<|im_end|>``), the prompt is context.

Runs (``--runs``): ``all`` (every example, every answer token); ``random-samples@F`` (a seeded
random ranking of the examples) and ``tshirt@F`` (ranked by their selective IFD under the base
model, :class:`tokensieve.train.select.SampleScorer`, scored once and shared by every seed)
keep the best-ranked examples within ``F`` of the answer tokens; ``qtuning:samples=S@K``
(per batch, under the current model: the misconception and calibration samples, ``S`` of the
batch, tokens pruned to ``K`` inside the misconception ones; dropped samples skip the training
pass, see :func:`tokensieve.train.causal_lm_loss`; the quadrants hold at most about half a batch, so
its answer tokens stay under half: ``samples=0.5@0.5`` learns ~25% of them, ``@1`` its most,
~40%); ``SELECTOR@F+METHOD`` trains the selected examples
with a token method (``tshirt@0.5+pdl``). One epoch over each run's examples, batch ``batch``,
AdamW, warm-up then cosine decay over the run's own steps, the same peak learning rate for all
(not tuned per run: there is no dev split of held-out tasks to tune it on honestly).

Measures: held-out accuracy (four options, the lowest summed loss; ``norm``: per character),
its spread over seeds; the answer tokens learned, the tokens trained (forward + backward) and
the FLOPs (:mod:`tokensieve.train.flops`, selection and scoring passes included; T-SHIRT's
one-off scoring pass reported apart) as ratios to ``all`` of the same seed; wall time.

    tokensieve bench sft --quick
    tokensieve bench sft --out benchmarks/results/sft
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import copy
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..train import causal_lm_loss, get_method, token_frequencies
from ..train.loss import resolve_keep
from ..train.select import check_fraction, random_scores
from .cli_main import check_common, read_results, run_cli
from .sft_data import END, SFTExample, accuracy
from .train_lm import lr_at

SELECTORS = ("random-samples", "tshirt")
RUNS = ("all", "random-samples@0.5", "random-samples@0.25", "tshirt@0.5", "tshirt@0.25",
        "qtuning:samples=0.5@0.5", "qtuning:samples=0.5@1", "tshirt@0.5+pdl")
QUICK_RUNS = ("all", "tshirt@0.5", "qtuning:samples=0.5@0.5")


@dataclass
class SFTRun:
    """One cell: an optional sample ``selector`` keeping ``fraction`` of the examples, then a
    token ``method`` at ``keep``."""

    spec: str
    selector: str | None
    fraction: float | None
    method: str
    keep: float | None


def parse_run(spec: str) -> SFTRun:
    """``[SELECTOR@F+]METHOD[@KEEP]`` or ``SELECTOR@F`` (with every answer token)."""
    parts = spec.split("+")
    name, _, frac = parts[0].partition("@")
    selector = fraction = None
    if name in SELECTORS:
        try:
            fraction = float(frac)
        except ValueError:
            raise UsageError(f"run {spec!r}: {name} needs the fraction of examples kept, "
                             f"e.g. {name}@0.5") from None
        fraction = check_fraction(fraction, f"run {spec!r}: the fraction of examples kept")
        selector, parts = name, parts[1:] or ["all"]
    if len(parts) != 1 or not parts[0]:
        raise UsageError(f"run {spec!r}: write [SELECTOR@F+]METHOD[@KEEP], selectors "
                         f"{', '.join(SELECTORS)}")
    method, at, k = parts[0].rpartition("@")
    if not at:
        method, k = parts[0], ""
    try:
        keep = float(k) if k else None
    except ValueError:
        raise UsageError(f"run {spec!r}: keep {k!r} is not a number") from None
    m = get_method(method)
    if "reference" in m.needs:
        raise UsageError(f"run {spec!r}: {m.name} needs a reference model; not in this bench")
    keep = None if m.keeps_all else resolve_keep(m, keep)
    return SFTRun(spec, selector, fraction, method, keep)


@dataclass
class Encoded:
    """An example's token ids and where its answer starts."""

    ids: list[int]
    start: int


def encode(tokenizer, ex: SFTExample) -> Encoded:
    prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    return Encoded(list(prompt) + list(answer), len(prompt))


def collate(rows: list[Encoded]) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (answer tokens only)."""
    t = max(len(r.ids) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = torch.tensor(r.ids)
        attn[i, :len(r.ids)] = 1
        labels[i, r.start:len(r.ids)] = ids[i, r.start:len(r.ids)]
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


@torch.no_grad()
def choice_losses(model, tokenizer, ex: SFTExample) -> list[float]:
    """The summed loss of each option (+ ``<|im_end|>``) after the prompt: the prompt runs
    once, its KV cache serves the four options in one batch (the same numbers as
    :func:`tokensieve.bench.sft_data.option_losses` up to float noise)."""
    device = next(model.parameters()).device
    prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    conts = [tokenizer(c + END, add_special_tokens=False)["input_ids"] for c in ex.choices]
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(conts))
    width = max(len(c) for c in conts)
    ids = torch.zeros(len(conts), width, dtype=torch.long, device=device)
    attn = torch.zeros(len(conts), len(prompt) + width, dtype=torch.long, device=device)
    attn[:, :len(prompt)] = 1
    for i, c in enumerate(conts):
        ids[i, :len(c)] = torch.tensor(c)
        attn[i, len(prompt):len(prompt) + len(c)] = 1
    logits = model(input_ids=ids, attention_mask=attn, past_key_values=cache).logits.float()
    logp = torch.log_softmax(logits, -1)
    losses = []
    for i, c in enumerate(conts):
        total = -first[c[0]]
        for j in range(1, len(c)):
            total = total - logp[i, j - 1, c[j]]
        losses.append(float(total))
    return losses


def evaluate(model, tokenizer, examples: list[SFTExample], progress: bool = False) -> dict:
    model.eval()
    losses = [choice_losses(model, tokenizer, ex)
              for ex in tqdm(examples, desc="held-out", disable=not progress, leave=False)]
    return accuracy(examples, losses)


def tshirt_scores(model, tokenizer, examples: list[SFTExample], batch: int = 8) -> np.ndarray:
    """Selective IFD of each example's answer under ``model`` (chat template)."""
    from ..train.select import SampleScorer, rank_scores

    scorer = SampleScorer(model, tokenizer, template="chat", batch_size=batch)
    scores = scorer.score_pairs([(ex.user, ex.answer) for ex in examples])
    return rank_scores(np.array([s.score for s in scores], dtype=np.float64),
                       np.array([np.nan if s.ifd is None else s.ifd for s in scores]))


def run_order(run: SFTRun, lengths: list[int], seed: int, tshirt: np.ndarray | None
              ) -> list[int]:
    """The examples ``run`` trains on, in ``seed``'s order (the same order for every run). A
    sample selector keeps the best-ranked examples while their answer tokens (``lengths``)
    stay within ``fraction`` of all of them, so ``tshirt@0.5`` and ``random-samples@0.5`` learn
    half the answer tokens whatever the lengths of the examples they prefer."""
    n = len(lengths)
    order = list(range(n))
    random.Random(f"sft-bench-order:{seed}").shuffle(order)
    if run.selector is None:
        return order
    scores = random_scores(n, seed) if run.selector == "random-samples" else tshirt
    ranked = sorted(range(n), key=lambda i: (-_rank_value(scores[i]), i))
    budget = run.fraction * sum(lengths)
    chosen, total = set(), 0
    for i in ranked:
        if total + lengths[i] > budget and chosen:
            break
        chosen.add(i)
        total += lengths[i]
    return [i for i in order if i in chosen]


def _rank_value(x: float) -> float:
    return -np.inf if x != x else float(x)  # NaN ranks last


def train_run(model, data: list[Encoded], order: list[int], run: SFTRun, *, batch: int,
              lr: float, seed: int, frequencies=None, progress: bool = False) -> dict:
    """One epoch of ``run`` over ``order``; the record of what it spent."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    steps = math.ceil(len(order) / batch)
    flops = kept = labelled = trained_tokens = trained_samples = 0
    model.train()
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=run.spec, disable=not progress, leave=False):
        rows = [data[i] for i in order[step * batch:(step + 1) * batch]]
        b = collate(rows)
        for g in opt.param_groups:
            g["lr"] = lr_at(step / steps, lr)
        opt.zero_grad(set_to_none=True)
        res, f = causal_lm_loss(model, b, run.method, run.keep, frequencies=frequencies,
                                seed=seed * 1_000_003 + step)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        trained = res.mask.any(dim=1)
        flops += f.total
        kept += res.kept
        labelled += res.labelled
        trained_samples += int(trained.sum())
        trained_tokens += int(b["attention_mask"][trained].sum())
    return {"label": run.spec, "seed": seed, "examples": len(order), "steps": steps,
            "answer_tokens": kept, "labelled": labelled, "trained_samples": trained_samples,
            "trained_tokens": trained_tokens, "flops": flops,
            "train_s": round(time.perf_counter() - t0, 3)}


@dataclass
class SFTConfig:
    runs: list[str]
    train_examples: int = 600
    held_out: int = 0          # 0: every held-out example
    batch: int = 8
    lr: float = 1e-4
    seeds: int = 1
    seed: int = 0
    data_seed: int = 0

    def check(self) -> list[SFTRun]:
        for name, v, low in (("train_examples", self.train_examples, 8),
                             ("held_out", self.held_out, 0), ("batch", self.batch, 1),
                             ("seeds", self.seeds, 1), ("seed", self.seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UsageError(f"{name} must be a whole number >= {low}, got {v!r}.")
        if not 0 < self.lr < 1:
            raise UsageError(f"lr must be in (0, 1), got {self.lr}.")
        if not self.runs:
            raise UsageError("no runs given.")
        return [parse_run(s) for s in self.runs]


def run_bench(sft, model, tokenizer, cfg: SFTConfig, *, log=print, progress=False) -> dict:
    """Every run of every seed from a fresh copy of ``model``; the results dict."""
    runs = cfg.check()
    pool = sft.train[:cfg.train_examples]
    held = list(sft.held_out)
    if cfg.held_out and cfg.held_out < len(held):
        held = random.Random(f"sft-bench-held:{cfg.data_seed}").sample(held, cfg.held_out)
    data = [encode(tokenizer, ex) for ex in pool]
    lengths = [len(d.ids) - d.start for d in data]
    t = time.perf_counter()
    base = evaluate(model, tokenizer, held, progress)
    eval_s = time.perf_counter() - t
    log(f"bench sft: {len(pool)} train examples, {len(held)} held-out; base model "
        f"{base['accuracy']:.3f} (chance {base['chance']:.3f}), evaluation {eval_s:.0f} s")
    tshirt = scoring = None
    if any(r.selector == "tshirt" for r in runs):
        t = time.perf_counter()
        tshirt = tshirt_scores(model, tokenizer, pool)
        scoring = {"seconds": round(time.perf_counter() - t, 3),
                   "forward_tokens": 2 * sum(len(d.ids) for d in data)}
        log(f"bench sft: T-SHIRT scores of {len(pool)} examples in {scoring['seconds']:.0f} s")
    freq = None
    if any("frequency" in get_method(r.method).needs for r in runs):
        freq = token_frequencies((d.ids for d in data), model.config.vocab_size)
    records = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        for run in runs:
            order = run_order(run, lengths, seed, tshirt)
            m = copy.deepcopy(model)
            torch.manual_seed(seed)
            rec = train_run(m, data, order, run, batch=cfg.batch, lr=cfg.lr, seed=seed,
                            frequencies=freq, progress=progress)
            rec["held_out"] = evaluate(m, tokenizer, held, progress)
            log(f"  seed {seed} {run.spec}: {rec['examples']} examples, {rec['steps']} steps, "
                f"held-out {rec['held_out']['accuracy']:.3f} "
                f"(norm {rec['held_out']['accuracy_norm']:.3f}), {rec['train_s']:.0f} s")
            records.append(rec)
            del m
    return {"meta": {"config": asdict(cfg), "model": "SmolLM2-135M-Instruct (embedded)",
                     "source": sft.source, "train_tasks": sft.train_tasks,
                     "held_out_tasks": sft.held_out_tasks, "pool": len(pool),
                     "held_out_examples": len(held), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "machine": platform.machine(),
                     "tshirt_scoring": scoring},
            "base": base, "runs": records}


def merge_results(new: dict, old: dict) -> dict:
    """``old``'s records of seeds ``new`` lacks join ``new`` (same data settings only)."""
    keys = ("train_examples", "held_out", "batch", "lr", "data_seed")
    a, b = new["meta"]["config"], old["meta"]["config"]
    if any(a[k] != b[k] for k in keys):
        raise UsageError("--merge: the earlier results used other settings ("
                         + ", ".join(f"{k} {b[k]} vs {a[k]}" for k in keys if a[k] != b[k])
                         + ").")
    have = {(r["label"], r["seed"]) for r in new["runs"]}
    out = dict(new)
    out["runs"] = [r for r in old["runs"] if (r["label"], r["seed"]) not in have] + new["runs"]
    return out


def parse(argv):
    from ..cli.common import Parser

    p = Parser(prog="tokensieve bench sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sft"))
    p.add_argument("--runs", nargs="+", default=list(RUNS),
                   help="[SELECTOR@F+]METHOD[@KEEP] each (default: %(default)s)")
    p.add_argument("--train-examples", type=int, default=SFTConfig.train_examples,
                   help="the training pool: the first N examples of the seeded train order")
    p.add_argument("--held-out", type=int, default=SFTConfig.held_out,
                   help="held-out examples scored (a seeded sample; 0: all)")
    p.add_argument("--batch", type=int, default=SFTConfig.batch)
    p.add_argument("--lr", type=float, default=SFTConfig.lr, help="peak learning rate")
    p.add_argument("--seeds", type=int, default=1, help="seeds (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", type=Path, default=None,
                   help="an earlier results.json of the same settings whose runs join")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: 48 train examples, 40 held-out, runs "
                   f"{' '.join(QUICK_RUNS)}")
    a = p.parse_args(argv)
    cfg = SFTConfig(runs=a.runs, train_examples=a.train_examples, held_out=a.held_out,
                    batch=a.batch, lr=a.lr, seeds=a.seeds, seed=a.seed)
    if a.quick:
        cfg.runs, cfg.train_examples, cfg.held_out = list(QUICK_RUNS), 48, 40
    check_common(a)
    cfg.check()
    return a, cfg


def main(argv: list[str] | None = None) -> int:
    def work():
        a, cfg = parse(argv)
        torch.set_num_threads(a.threads)
        from ..models import load_causal_lm
        from .sft_data import build_sft
        from .sft_report import write_report

        loaded = load_causal_lm("default")
        sft = build_sft(seed=cfg.data_seed)
        results = run_bench(sft, loaded.model, loaded.tokenizer, cfg,
                            progress=sys.stderr.isatty(),
                            log=lambda s: print(s, file=sys.stderr, flush=True))
        if a.merge is not None:
            results = merge_results(results, read_results(a.merge))
        a.out.mkdir(parents=True, exist_ok=True)
        return write_report(results, a.out)

    return run_cli(work)
