"""One run of the training benchmark: a small Llama built from a config and a seed, trained
with a token-selective loss (:func:`tokensieve.train.selective_loss`, the LM head only on the
kept rows) on a seeded order of training blocks until its counted FLOPs reach a budget,
evaluated on fixed held-out blocks at fixed FLOP marks (evaluation FLOPs are not counted).

The learning rate follows the fraction of the budget spent, not the step number: a linear
warm-up from 10% to the peak over the first ``WARMUP`` of the FLOPs, then a cosine down to
10% of the peak at the budget; a run whose steps are cheaper takes more, smaller-FLOP steps
along the same curve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.budget import keep_count
from ..engine.select import select_top_k
from ..errors import UsageError
from ..train import (
    ModelShape,
    causal_lm_loss,
    get_method,
    selective_loss,
    split_causal_lm,
    step_flops,
)
from ..train.loss import resolve_keep
from .lm_corpus import training_windows

WARMUP = 0.05          # fraction of the FLOP budget spent warming up
FINAL_LR = 0.1         # the schedule ends at this fraction of the peak
EVAL_ROWS = 2048       # rows of logits at once in evaluation


@dataclass(frozen=True)
class ModelSize:
    """The decoder's sizes (the vocabulary comes from the tokenizer)."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 688

    def check(self) -> ModelSize:
        for k in ("hidden", "layers", "heads", "kv_heads", "intermediate"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 8192:
                raise UsageError(f"model {k} must be a whole number in [1, 8192], got {v!r}.")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise UsageError(f"hidden ({self.hidden}) must be a multiple of heads "
                             f"({self.heads}) and heads of kv heads ({self.kv_heads}).")
        return self


def build_model(size: ModelSize, vocab: int, max_positions: int, seed: int):
    """A Llama with tied embeddings, initialised from ``seed`` (the global RNG untouched)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    size.check()
    cfg = LlamaConfig(vocab_size=int(vocab), hidden_size=size.hidden,
                      intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                      num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                      max_position_embeddings=int(max_positions), tie_word_embeddings=True,
                      rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LlamaForCausalLM(cfg)
    return model


def lr_at(fraction: float, peak: float) -> float:
    """The learning rate after ``fraction`` of the FLOP budget (see the module docstring)."""
    f = min(max(float(fraction), 0.0), 1.0)
    if f < WARMUP:
        return peak * (FINAL_LR + (1 - FINAL_LR) * f / WARMUP)
    t = (f - WARMUP) / (1 - WARMUP)
    return peak * (FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * t)))


def informative_mask(ref_losses: torch.Tensor, share: float) -> torch.Tensor:
    """(n, T) bool: the ``share`` of predicted tokens (positions 1..T-1) with the highest
    reference loss (surprisal) over the whole set, ties by position (the engine's top-k)."""
    flat = ref_losses[:, 1:].reshape(-1).float()
    keep = select_top_k(flat, keep_count(share, flat.numel()))
    mask = torch.zeros(ref_losses.shape, dtype=torch.bool)
    mask[:, 1:] = keep.reshape(ref_losses.shape[0], -1)
    return mask


def evaluate(model, blocks: torch.Tensor, informative: torch.Tensor, batch: int = 8) -> dict:
    """Mean next-token loss on every predicted token and on the ``informative`` ones, and
    top-1 next-token accuracy, over ``blocks`` (n, T), without gradients."""
    body, head = split_causal_lm(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ce_sum = inf_sum = 0.0
    n = n_inf = correct = 0
    with torch.inference_mode():
        for i in range(0, len(blocks), batch):
            x = blocks[i:i + batch].to(device)
            hid = body(input_ids=x).last_hidden_state[:, :-1].reshape(-1, model.config.hidden_size)
            tgt = x[:, 1:].reshape(-1)
            inf = informative[i:i + batch, 1:].reshape(-1).to(device)
            for j in range(0, len(tgt), EVAL_ROWS):
                logits = head(hid[j:j + EVAL_ROWS]).float()
                t = tgt[j:j + EVAL_ROWS]
                ce = F.cross_entropy(logits, t, reduction="none").double()
                ce_sum += float(ce.sum())
                inf_sum += float(ce[inf[j:j + EVAL_ROWS]].sum())
                n_inf += int(inf[j:j + EVAL_ROWS].sum())
                correct += int((logits.argmax(-1) == t).sum())
                n += len(t)
    model.train(was_training)
    return {"loss": ce_sum / n, "loss_informative": inf_sum / max(n_inf, 1),
            "accuracy": correct / n}


@dataclass
class Run:
    """One cell: a method spec ("eslm", "qtuning:samples=0.5", ...) at ``keep``."""

    method: str
    keep: float | None = None

    @property
    def label(self) -> str:
        return self.method if self.keep is None else f"{self.method}@{self.keep:g}"

    def check(self) -> Run:
        self.keep = resolve_keep(get_method(self.method), self.keep)
        if get_method(self.method).keeps_all:
            self.keep = None  # the method learns every token: no keep in its label
        return self


def train_run(model, train_ids: np.ndarray, run: Run, *, block_len: int, batch: int, seed: int,
              budget: int, lr: float, marks: list[int], eval_fn, reference=None,
              frequencies=None, progress=None) -> dict:
    """Train ``model`` with ``run``'s loss on the training blocks in ``seed``'s order until
    its counted FLOPs reach ``budget`` (so it ends within one step past it). ``marks``:
    FLOP counts after which ``eval_fn(model)`` runs (its result joins the curve).
    ``reference(windows) -> (n, T)`` per-token losses for ``excess``; ``frequencies`` for
    ``pdl``. Returns the run's record (steps, tokens learned, FLOPs, seconds, curve, and the
    first window of each step, to check the data order)."""
    method = get_method(run.method)
    keep = 1.0 if run.keep is None else run.keep
    shape = ModelShape.from_config(model.config)
    body, head = split_causal_lm(model)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    spent = step = tokens = labelled = 0
    curve, first_windows = [], []
    train_s = 0.0
    pending = sorted(int(m) for m in marks)
    model.train()
    t_run = time.perf_counter()
    while spent < budget:
        windows = training_windows(train_ids.size, block_len, seed, step * batch, batch)
        x = torch.from_numpy(np.stack([train_ids[w * block_len:(w + 1) * block_len]
                                       for w in windows]).astype(np.int64)).to(device)
        ref = reference(windows).to(device) if "reference" in method.needs else None
        for g in opt.param_groups:
            g["lr"] = lr_at(spent / budget, lr)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if method.drops_samples:  # two passes: the dropped samples skip the training pass
            res, flops = causal_lm_loss(model, {"input_ids": x, "labels": x}, method, keep,
                                        frequencies=frequencies, seed=seed * 1_000_003 + step)
            cost = flops.total
        else:
            hidden = body(input_ids=x).last_hidden_state
            res = selective_loss(hidden, x, method, keep, head=head, reference=ref,
                                 frequencies=frequencies, seed=seed * 1_000_003 + step)
            cost = step_flops(shape, batch, block_len, res.head_rows, res.scored_rows).total
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_s += time.perf_counter() - t0
        spent += cost
        tokens += res.kept
        labelled += res.labelled
        step += 1
        first_windows.append(int(windows[0]))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{float(res.loss.detach()):.3f}",
                                 flops=f"{spent / budget:.0%}")
        while pending and spent >= pending[0]:
            curve.append({"step": step, "flops": spent, **eval_fn(model)})
            pending.pop(0)
    return {"label": run.label, "method": run.method, "keep": run.keep, "seed": seed,
            "steps": step, "tokens": tokens, "labelled": labelled, "flops": spent,
            "train_s": round(train_s, 3), "wall_s": round(time.perf_counter() - t_run, 3),
            "curve": curve, "first_windows": first_windows}
