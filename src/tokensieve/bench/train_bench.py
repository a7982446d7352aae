"""The training benchmark (experiment 1 of token-selective training): language modelling at
equal FLOPs, every token-selective loss side by side with full-token training in one run.

Model: a small Llama trained from scratch with SmolLM2's tokenizer (vocabulary 49,152;
hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 688, tied embeddings; initialised from the
seed). Continued training of SmolLM2-135M would be the more realistic setting, but one of
its steps on 8 x 256 tokens is ~1.7 TFLOPs, about half a minute on 2 CPU cores, which leaves
no room for ten runs. At this size the LM head
(256 x 49,152) is most of a step's FLOPs (the share is in the report, from
:func:`tokensieve.train.step_flops`), so what a method saves by running the head only on the
kept rows is much larger here than it would be for a bigger model, where the body dominates:
read the FLOP ratios with that in mind.

Data: :mod:`tokensieve.bench.lm_corpus` (State of the Union addresses, public domain, and
Django's documentation, BSD-3; split by document), blocks of ``block_len`` tokens in one
seeded order shared by every run of a seed.

Runs: ``all`` (every token), and ``random``, ``eslm``, ``excess`` at keep 0.3 and 0.6,
``pdl`` (every token, weighted), ``qtuning`` (samples 0.5, keep 0.6 inside misconception
samples). AdamW, the learning rate scheduled over the fraction of the FLOP budget spent
(:mod:`.train_lm`). Budget: the FLOPs of the full run's ``steps`` steps; every run stops
once its counted FLOPs (forward, backward, the selection pass; ``step_flops``) reach it, so a
method with cheaper steps takes more of them. ``excess`` reads the reference's (SmolLM2-135M)
per-token losses, computed once per training window and cached (float16): their FLOPs are
reported once, separately, not charged to a run. They are not small: per token, SmolLM2's
forward costs ~3x a full training step of the small model, so the reference pass for the
excess runs costs several times the budget; it pays off only when reused (Rho-1's setting).

Measures on ``eval_blocks`` held-out blocks spread over the split: the loss on every token;
the loss on the "informative" tokens, the 30% with the highest reference loss (SmolLM2
surprisal; fixed once per split, the same for every run); next-token top-1 accuracy (the
downstream measure: a model this small moves it from the first steps, where a cloze over
whole words stays near chance). Curves on dev at fixed FLOP marks (``evals`` evenly spaced
fractions of the budget, so every run has points at the same FLOPs; evaluation FLOPs are
not counted); the final table on dev and test; the best selector is picked on dev only.

FLOPs are counted as the library spends them: ``eslm``, ``excess`` and ``qtuning`` score
every row with a no-grad head pass before the head runs again with gradients on the kept
rows, so at keep 0.6 their steps are barely cheaper than a full step; ``random`` needs no
scoring pass and ``pdl`` keeps every token (it only reweights). ``qtuning`` drops whole
samples: a no-grad forward of the batch selects, then only the kept samples run forward and
backward (:func:`tokensieve.train.causal_lm_loss`).

    tokensieve bench train --quick
    tokensieve bench train --out benchmarks/results/train
    tokensieve bench train --runs all eslm@0.6 --seeds 3 --out benchmarks/results/train-seeds
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch is imported

import copy
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..train import ModelShape, get_method, step_flops, token_frequencies
from .cli_main import check_common, read_results, run_cli
from .lm_corpus import TokenSplit, eval_blocks, training_windows
from .train_lm import ModelSize, Run, build_model, evaluate, informative_mask, train_run
from .train_ref import ReferenceLosses, stream_key

RUNS = ("all", "random@0.3", "random@0.6", "eslm@0.3", "eslm@0.6", "excess@0.3",
        "excess@0.6", "pdl", "qtuning:samples=0.5@0.6")
QUICK_RUNS = ("all", "excess@0.3")
QUICK_SIZE = ModelSize(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=172)


@dataclass
class BenchConfig:
    runs: list[str] = field(default_factory=lambda: list(RUNS))
    size: ModelSize = field(default_factory=ModelSize)
    steps: int = 120            # of the full run: sets the FLOP budget
    batch: int = 8
    block_len: int = 256
    lr: float = 2e-3
    evals: int = 6              # curve points (evenly spaced FLOP marks)
    eval_blocks: int = 48
    informative: float = 0.3
    seeds: int = 1
    seed: int = 0

    def check(self) -> list[Run]:
        """The runs, parsed; a :class:`UsageError` for any bad setting."""
        bounds = {"steps": (1, 10**6), "batch": (1, 4096), "block_len": (8, 8192),
                  "evals": (1, 100), "eval_blocks": (1, 4096), "seeds": (1, 100)}
        for k, (lo, hi) in bounds.items():
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UsageError(f"{k.replace('_', '-')} must be a whole number in [{lo}, {hi}]"
                                 f", got {v!r}.")
        if not 0 < self.lr <= 1:
            raise UsageError(f"lr must be in (0, 1], got {self.lr!r}.")
        if not 0 < self.informative < 1:
            raise UsageError(f"informative must be a fraction in (0, 1), got "
                             f"{self.informative!r}.")
        self.size.check()
        runs = [parse_run(r) for r in self.runs]
        if not runs:
            raise UsageError("give at least one run, e.g. --runs all eslm@0.6.")
        labels = [r.label for r in runs]
        if len(set(labels)) != len(labels):
            raise UsageError(f"a run is listed twice in {labels}.")
        return runs


def parse_run(spec: str) -> Run:
    """``"method[:settings][@keep]"`` -> a checked :class:`Run` ("eslm@0.3", "pdl")."""
    method, _, keep = str(spec).rpartition("@") if "@" in str(spec) else (spec, "", "")
    try:
        k = float(keep) if keep else None
    except ValueError:
        raise UsageError(f"run {spec!r}: keep after '@' must be a number, e.g. eslm@0.3.") \
            from None
    return Run(method, k).check()


def spread_windows(n_windows: int, count: int) -> np.ndarray:
    """``count`` window indices spread evenly over ``n_windows`` (all when fewer)."""
    if n_windows <= count:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, count).round().astype(np.int64))


def held_out(split: TokenSplit, cfg: BenchConfig, reference: ReferenceLosses):
    """(blocks, informative mask, windows) of a held-out split."""
    every = eval_blocks(split.ids, cfg.block_len)
    windows = spread_windows(len(every), cfg.eval_blocks)
    blocks = torch.from_numpy(every[windows])
    return blocks, informative_mask(reference(windows), cfg.informative), windows


def head_share(shape: ModelShape, batch: int, block_len: int) -> float:
    """The LM head's share of a full-token training step's FLOPs."""
    f = step_flops(shape, batch, block_len, head_rows=batch * (block_len - 1))
    return (f.head_forward + f.head_backward) / f.total


def expected_steps(run: Run, shape: ModelShape, cfg: BenchConfig, budget: int) -> int:
    """Steps a run should take (kept rows at ``keep``; a sample-dropping method: its no-grad
    pass over the batch, then a step over its ``samples`` share)."""
    m = get_method(run.method)
    rows = cfg.batch * (cfg.block_len - 1)
    kept = rows if run.keep is None else int(rows * run.keep)
    scored = rows if m.needs & {"loss", "entropy"} else 0
    if m.drops_samples:
        share = getattr(m, "samples", 1.0)
        n = max(1, round(cfg.batch * share))
        first = step_flops(shape, cfg.batch, cfg.block_len, 0, rows)
        second = step_flops(shape, n, cfg.block_len, int(kept * share))
        return int(np.ceil(budget / (first.body_forward + first.scoring + second.total)))
    return int(np.ceil(budget / step_flops(shape, cfg.batch, cfg.block_len, kept, scored).total))


def measure(cfg: BenchConfig, vocab: int, train_ids: np.ndarray,
            reference: ReferenceLosses | None = None) -> dict:
    """Seconds per full-token step (3 steps, the first a warm-up, on a throwaway model) and
    per reference window (timed on the first batch of training windows, which it caches,
    when ``reference`` is given and they are not cached yet)."""
    model = build_model(cfg.size, vocab, cfg.block_len, cfg.seed)
    shape = ModelShape.from_config(model.config)
    one = step_flops(shape, cfg.batch, cfg.block_len, cfg.batch * (cfg.block_len - 1)).total
    rec = train_run(model, train_ids, Run("all"), block_len=cfg.block_len, batch=cfg.batch,
                    seed=cfg.seed, budget=3 * one, lr=cfg.lr, marks=[], eval_fn=None)
    per_step = rec["train_s"] / 3  # includes the warm-up step: errs on the long side
    per_window = 0.0
    if reference is not None:
        first = training_windows(train_ids.size, cfg.block_len, cfg.seed, 0, cfg.batch)
        if not set(first.tolist()) <= reference.cache.keys():
            t = time.perf_counter()
            reference.compute(first)
            per_window = (time.perf_counter() - t) / cfg.batch
    return {"s_per_full_step": per_step, "s_per_reference_window": per_window}


def estimate(cfg: BenchConfig, runs: list[Run], shape: ModelShape, speed: dict,
             cached_windows: int = 0) -> float:
    """Seconds the bench should take: equal FLOPs ~ equal time for the runs, plus the
    evaluations (a forward is ~1/3 of a step) and the uncached reference windows."""
    budget = cfg.steps * step_flops(shape, cfg.batch, cfg.block_len,
                                    cfg.batch * (cfg.block_len - 1)).total
    train = cfg.steps * speed["s_per_full_step"] * len(runs)
    evals = (cfg.evals + 1) * cfg.eval_blocks / cfg.batch * speed["s_per_full_step"] / 3
    refs = [expected_steps(r, shape, cfg, budget) for r in runs
            if "reference" in get_method(r.method).needs]
    windows = (max(refs) * cfg.batch if refs else 0) + 2 * cfg.eval_blocks
    ref_s = max(windows - cached_windows, 0) * speed["s_per_reference_window"]
    return cfg.seeds * (train + evals * len(runs)) + ref_s


def run_bench(splits: dict[str, TokenSplit], cfg: BenchConfig, reference_model, *,
              reference_name: str = "reference", cache_dir: Path | None = None,
              progress: bool = True, log=print) -> dict:
    """Every run of ``cfg`` for each seed; returns the results dict (see the report).
    ``reference_model``: a causal LM with the corpus's vocabulary (the informative-token
    sets, ``excess``); ``cache_dir``: where its per-window losses are kept."""
    runs = cfg.check()
    vocab = int(reference_model.config.vocab_size)
    train_ids = splits["train"].ids
    for name, s in splits.items():
        if s.ids.size and int(s.ids.max()) >= vocab:
            raise UsageError(f"the {name} split has token id {int(s.ids.max())}, outside the "
                             f"reference's vocabulary of {vocab}; tokenise with its tokenizer.")

    def refs(split: str) -> ReferenceLosses:
        ids = splits[split].ids
        path = None if cache_dir is None else (
            Path(cache_dir) / f"{split}-{stream_key(ids, cfg.block_len, reference_name)}.npz")
        return ReferenceLosses(reference_model, ids, cfg.block_len, path, batch=cfg.batch)

    ref_train, ref_dev, ref_test = refs("train"), refs("dev"), refs("test")
    probe = build_model(cfg.size, vocab, cfg.block_len, cfg.seed)
    shape = ModelShape.from_config(probe.config)
    full_step = step_flops(shape, cfg.batch, cfg.block_len, cfg.batch * (cfg.block_len - 1))
    budget = cfg.steps * full_step.total
    t_start = time.perf_counter()
    needs_ref = [r for r in runs if "reference" in get_method(r.method).needs]
    speed = measure(cfg, vocab, train_ids, ref_train if needs_ref else None)
    est = estimate(cfg, runs, shape, speed, cached_windows=len(ref_train.cache))
    log(f"bench train: {len(runs)} runs x {cfg.seeds} seed(s), {cfg.steps} full steps of "
        f"{cfg.batch} x {cfg.block_len} tokens; {speed['s_per_full_step']:.2f} s per full step"
        f" measured -> about {est / 60:.1f} min in all")
    dev_blocks, dev_inf, _ = held_out(splits["dev"], cfg, ref_dev)
    test_blocks, test_inf, _ = held_out(splits["test"], cfg, ref_test)
    ref_dev.save()
    ref_test.save()
    frequencies = None
    if any("frequency" in get_method(r.method).needs for r in runs):
        frequencies = token_frequencies([train_ids], vocab)
    if needs_ref:  # precompute the windows the reference runs will read, once
        n = max(expected_steps(r, shape, cfg, budget) for r in needs_ref) + 1
        todo = [w for s in range(cfg.seeds) for w in
                training_windows(train_ids.size, cfg.block_len, cfg.seed + s, 0, n * cfg.batch)]
        todo = sorted(set(int(w) for w in todo) - ref_train.cache.keys())
        log(f"reference losses on {len(todo)} training blocks (cached for later runs; about "
            f"{len(todo) * speed['s_per_reference_window'] / 60:.0f} min)")
        for i in tqdm(range(0, len(todo), 64), desc="reference losses", disable=not progress):
            ref_train.compute(todo[i:i + 64])
        ref_train.save()
    marks = [round(budget * (k + 1) / cfg.evals) for k in range(cfg.evals)]
    records = []
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        init = build_model(cfg.size, vocab, cfg.block_len, seed)
        start = {"step": 0, "flops": 0, **evaluate(init, dev_blocks, dev_inf, cfg.batch)}
        for run in runs:
            model = copy.deepcopy(init)
            bar = tqdm(total=expected_steps(run, shape, cfg, budget), desc=f"{run.label} s{seed}",
                       disable=not progress, leave=False)
            rec = train_run(model, train_ids, run, block_len=cfg.block_len, batch=cfg.batch,
                            seed=seed, budget=budget, lr=cfg.lr, marks=marks,
                            eval_fn=lambda m: evaluate(m, dev_blocks, dev_inf, cfg.batch),
                            reference=ref_train, frequencies=frequencies, progress=bar)
            bar.close()
            rec["curve"].insert(0, start)
            rec["dev"] = {k: rec["curve"][-1][k] for k in ("loss", "loss_informative",
                                                            "accuracy")}
            rec["test"] = evaluate(model, test_blocks, test_inf, cfg.batch)
            records.append(rec)
            log(f"{run.label:>24} seed {seed}: {rec['steps']} steps, dev loss "
                f"{rec['dev']['loss']:.3f} (informative {rec['dev']['loss_informative']:.3f}), "
                f"{rec['train_s']:.0f} s")
        ref_train.save()
    ref_shape = ModelShape.from_config(reference_model.config)
    meta = {"config": {**asdict(cfg), "size": asdict(cfg.size)}, "vocab": vocab,
            "shape": asdict(shape), "params": sum(p.numel() for p in probe.parameters()),
            "budget_flops": budget, "full_step_flops": full_step.total,
            "head_share": head_share(shape, cfg.batch, cfg.block_len),
            "reference": reference_name, "reference_shape": asdict(ref_shape),
            "reference_windows": len(ref_train.used), "reference_flops": ref_train.flops(),
            "eval_windows": len(dev_blocks), "tokens": {k: v.n_tokens for k, v in splits.items()},
            "speed": speed, "estimate_s": round(est, 1),
            "seconds": round(time.perf_counter() - t_start, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}
    return {"meta": meta, "runs": records}


SAME = ("size", "steps", "batch", "block_len", "lr", "evals", "eval_blocks", "informative")


def merge_results(new: dict, old: dict) -> dict:
    """``new`` with the runs of an earlier ``old`` results dict added (a run of the same label
    and seed in both: the new one counts); both must share the model, budget, schedule and
    held-out sets (so more seeds of some runs can be added later)."""
    a, b = new["meta"], old.get("meta", {})
    differ = [k for k in SAME if a["config"].get(k) != b.get("config", {}).get(k)]
    differ += [k for k in ("budget_flops", "reference", "tokens") if a.get(k) != b.get(k)]
    if differ:
        raise UsageError(f"cannot merge with the earlier results: they differ in "
                         f"{', '.join(differ)}; rerun with the same settings.")
    have = {(r["label"], r["seed"]) for r in new["runs"]}
    kept = [r for r in old["runs"] if (r["label"], r["seed"]) not in have]
    seeds = sorted({r["seed"] for r in kept + new["runs"]})
    meta = {**a, "merged_runs": len(kept), "seeds": seeds}
    return {"meta": meta, "runs": kept + new["runs"]}


def parse(argv):
    from ..cli.common import Parser

    p = Parser(prog="tokensieve bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train"))
    p.add_argument("--runs", nargs="+", default=list(RUNS),
                   help="method[:settings][@keep] each (default: %(default)s)")
    p.add_argument("--steps", type=int, default=BenchConfig.steps,
                   help="steps of the full run; its FLOPs are every run's budget")
    p.add_argument("--batch", type=int, default=BenchConfig.batch)
    p.add_argument("--block", type=int, default=BenchConfig.block_len, help="tokens per block")
    p.add_argument("--lr", type=float, default=BenchConfig.lr, help="peak learning rate")
    p.add_argument("--hidden", type=int, default=ModelSize.hidden)
    p.add_argument("--layers", type=int, default=ModelSize.layers)
    p.add_argument("--heads", type=int, default=ModelSize.heads)
    p.add_argument("--kv-heads", type=int, default=ModelSize.kv_heads)
    p.add_argument("--intermediate", type=int, default=ModelSize.intermediate)
    p.add_argument("--evals", type=int, default=BenchConfig.evals, help="curve points")
    p.add_argument("--eval-blocks", type=int, default=BenchConfig.eval_blocks,
                   help="held-out blocks per split")
    p.add_argument("--informative", type=float, default=BenchConfig.informative,
                   help="share of held-out tokens with the highest reference loss")
    p.add_argument("--seeds", type=int, default=1, help="seeds (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default="default", help="reference causal LM (same tokenizer)")
    p.add_argument("--merge", type=Path, default=None,
                   help="an earlier results.json of the same settings whose runs join this "
                   "report (e.g. more seeds of the best run and the full run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: hidden 64, 2 layers, blocks of 64, 12 steps, "
                   f"runs {' '.join(QUICK_RUNS)}")
    a = p.parse_args(argv)
    size = ModelSize(a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate)
    cfg = BenchConfig(runs=a.runs, size=size, steps=a.steps, batch=a.batch, block_len=a.block,
                      lr=a.lr, evals=a.evals, eval_blocks=a.eval_blocks,
                      informative=a.informative, seeds=a.seeds, seed=a.seed)
    if a.quick:
        cfg.runs, cfg.size, cfg.steps, cfg.batch, cfg.block_len = (list(QUICK_RUNS), QUICK_SIZE,
                                                                   12, 4, 64)
        cfg.evals, cfg.eval_blocks = 3, 8
    check_common(a)
    cfg.check()
    return a, cfg


def main(argv: list[str] | None = None) -> int:
    def work():
        a, cfg = parse(argv)
        torch.set_num_threads(a.threads)
        from ..models import load_causal_lm
        from .lm_corpus import corpus_tokens, describe
        from .store import data_dir
        from .train_report import write_report

        loaded = load_causal_lm(a.reference)
        splits = corpus_tokens(tokenizer=loaded.tokenizer)
        results = run_bench(splits, cfg, loaded.model, reference_name=a.reference,
                            cache_dir=data_dir() / "lm-reference",
                            progress=sys.stderr.isatty(),
                            log=lambda s: print(s, file=sys.stderr, flush=True))
        results["meta"]["corpus"] = describe()
        if a.merge is not None:
            results = merge_results(results, read_results(a.merge))
        a.out.mkdir(parents=True, exist_ok=True)
        return write_report(results, a.out)

    return run_cli(work)
