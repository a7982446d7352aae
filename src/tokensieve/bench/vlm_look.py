"""``tokensieve vlm train-look``: distil where the language model looks into a look head.

1. **Targets** (cached by data, depth and model weights). For each question of a split,
   run the VLM with ``vlm.prune`` and a recording method: the pruner hands it the image's
   visual tokens, the question's embeddings and the language-model probe, which returns the
   attention the prompt's last token pays to every visual token at the decoder layer at
   ``depth`` (the ``probe`` method's signal, on all the tokens). The method keeps one token,
   so the forward after it is cheap.
2. **Fit.** :class:`~tokensieve.vlm.look_head.LookHead` learns those distributions (KL
   divergence, AdamW) on the train split.
3. **Validate** on the dev split (no shared source image): the target's attention mass that
   the head's top-k tokens hold, against k random tokens (k / N) and the best possible (the
   target's own top k), per question type.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..vlm.look_head import LookHead, coordinates, fingerprint, pool_text, save_head
from ..vlm.methods.base import Visual, VLMMethod


@dataclass
class LookSet:
    """Per image: its visual tokens (N, D) and coordinates (N, 2); per question: its image,
    pooled question (2D,), target attention (N,) summing to 1, and type."""

    features: list[torch.Tensor] = field(default_factory=list)
    coords: list[torch.Tensor] = field(default_factory=list)
    image: list[int] = field(default_factory=list)
    question: list[torch.Tensor] = field(default_factory=list)
    target: list[torch.Tensor] = field(default_factory=list)
    qtype: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image)


class _Recorder(VLMMethod):
    """Keeps token 0 and records, per image, the probe of all its tokens at ``depth``."""

    name = "record-look"
    stages = frozenset({"before"})
    needs = frozenset({"probe", "text"})
    question_aware = True

    def __init__(self, depth: float) -> None:
        self.depth = depth
        self.rows: list[tuple[Visual, torch.Tensor]] = []

    def select(self, v: Visual) -> torch.Tensor:
        att = v.probe(torch.arange(v.n), self.depth).float()
        self.rows.append((v, att))
        keep = torch.zeros(v.n, dtype=torch.bool)
        keep[:v.count] = True
        return keep


def weights_digest(model) -> str:
    """A digest of the model's weights (sums per tensor), so cached targets follow a
    retrained projector."""
    h = hashlib.sha256(fingerprint(model).encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            h.update(f"{name}:{tuple(p.shape)}:{float(p.double().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def cached_collect(model, processor, data, *, depth: float = 0.7, folder: Path | None = None,
                   progress: bool = True) -> LookSet:
    """:func:`collect`, kept under ``folder`` (default ``cache_dir()/vlm``) by the data, the
    depth and the model's weights, so refitting the head skips the language model."""
    from ..assets.cache import cache_dir

    folder = Path(folder) if folder else cache_dir() / "vlm"
    key = hashlib.sha256(f"{data.key()}:{depth}:{weights_digest(model)}".encode()).hexdigest()
    path = folder / f"look-targets-{key[:16]}.pt"
    if path.is_file():
        return LookSet(**torch.load(path, weights_only=True))
    out = collect(model, processor, data, depth=depth, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(vars(out), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@torch.no_grad()
def collect(model, processor, data, *, depth: float = 0.7, batch: int = 8,
            progress: bool = True) -> LookSet:
    """Targets for every question of ``data`` (one image per question)."""
    from tqdm.auto import tqdm

    from .. import vlm
    from .vlm_eval import inputs_for

    out, seen = LookSet(), {}
    bar = tqdm(total=len(data.examples), desc="look targets", unit="q", disable=not progress)
    for start in range(0, len(data.examples), batch):
        chunk = data.examples[start:start + batch]
        inputs = inputs_for(processor, [data.image(e.image) for e in chunk],
                            [e.question for e in chunk])
        recorder = _Recorder(depth)
        with vlm.prune(model, recorder, count=1):
            model(**{k: v.to(model.device) for k, v in inputs.items()})
        if len(recorder.rows) != len(chunk):
            raise RuntimeError(f"expected one image per question, got {len(recorder.rows)} "
                               f"for {len(chunk)}")
        for ex, (v, att) in zip(chunk, recorder.rows, strict=True):
            if ex.image not in seen:
                seen[ex.image] = len(out.features)
                out.features.append(v.features.detach().to(torch.float16).cpu())
                out.coords.append(coordinates(v.n, v.grid))
            out.image.append(seen[ex.image])
            out.question.append(pool_text(v.text).cpu())
            out.target.append((att / att.sum()).cpu())
            out.qtype.append(ex.qtype)
        bar.update(len(chunk))
    bar.close()
    return out


def _batch(ds: LookSet, idx) -> tuple[torch.Tensor, ...]:
    feats = torch.stack([ds.features[ds.image[i]] for i in idx]).float()
    coords = torch.stack([ds.coords[ds.image[i]] for i in idx])
    return (feats, coords, torch.stack([ds.question[i] for i in idx]),
            torch.stack([ds.target[i] for i in idx]))


def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean KL(target || softmax(logits)) over rows."""
    logp = torch.log_softmax(logits, -1)
    return (target * (target.clamp_min(1e-12).log() - logp)).sum(-1).mean()


def fit(train: LookSet, *, hidden: int = 128, heads: int = 4, freqs: int = 4,
        context: int = 0, epochs: int = 30, lr: float = 2e-3, weight_decay: float = 0.01,
        batch: int = 32, seed: int = 0,
        progress: bool = True) -> tuple[LookHead, list[list[float]]]:
    """A head fitted to ``train`` (all its images must have the same token count)."""
    from tqdm.auto import tqdm

    sizes = {f.shape[0] for f in train.features}
    if len(sizes) != 1:
        raise UsageError(f"train-look needs one visual token count per image (a fixed image "
                         f"size), got {sorted(sizes)[:5]}; resize the images to one size.")
    torch.manual_seed(seed)
    head = LookHead(train.features[0].shape[1], hidden, heads, freqs, context)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    rng = np.random.default_rng(seed)
    curve = []
    for epoch in tqdm(range(epochs), desc="fit look head", disable=not progress):
        order, total = rng.permutation(len(train)), 0.0
        for s in range(0, len(order), batch):
            feats, coords, q, target = _batch(train, order[s:s + batch])
            loss = kl(head(feats, coords, q), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(target)
        curve.append([epoch + 1, round(total / len(train), 5)])
    return head.eval(), curve


@torch.no_grad()
def validate(head: LookHead, ds: LookSet, counts: tuple[int, ...] = (64, 32, 16)) -> dict:
    """Per question type and overall: KL, and for each k the target mass held by the head's
    top k, by k random tokens (k / N) and by the target's own top k."""
    by_type: dict[str, list[int]] = {"all": list(range(len(ds)))}
    for i, t in enumerate(ds.qtype):
        by_type.setdefault(t, []).append(i)
    out = {}
    for name, idx in by_type.items():
        feats, coords, q, target = _batch(ds, idx)
        logits = head(feats, coords, q)
        row = {"n": len(idx), "kl": round(float(kl(logits, target)), 4)}
        n = target.shape[-1]
        for k in counts:
            if k > n:
                continue
            held = target.gather(-1, logits.topk(k, -1).indices).sum(-1)
            best = target.topk(k, -1).values.sum(-1)
            row[f"mass@{k}"] = round(float(held.mean()), 4)
            row[f"mass@{k}_se"] = round(float(held.std() / math.sqrt(len(idx))), 4) \
                if len(idx) > 1 else 0.0
            row[f"random@{k}"] = round(k / n, 4)
            row[f"best@{k}"] = round(float(best.mean()), 4)
        out[name] = row
    return out


def train_look(out, *, model=None, processor=None, single: int = 300, grids: int = 300,
               dev_single: int = 60, dev_grids: int = 40, depth: float = 0.7,
               hidden: int = 128, context: int = 0, epochs: int = 30, lr: float = 2e-3,
               weight_decay: float = 0.01, seed: int = 0, progress: bool = True) -> dict:
    """Collect targets on train / dev, fit, validate, save the head and its record in ``out``;
    returns the record."""
    from . import vlm_data

    if model is None:
        from ..models.llava_small import load_small_vlm

        model, processor = load_small_vlm()
    t0 = time.perf_counter()
    train = cached_collect(model, processor, vlm_data.build("train", single, grids, seed=seed,
                                                            questions="all"),
                           depth=depth, progress=progress)
    dev = cached_collect(model, processor, vlm_data.build("dev", dev_single, dev_grids,
                                                          seed=seed),
                         depth=depth, progress=progress)
    t1 = time.perf_counter()
    head, curve = fit(train, hidden=hidden, context=context, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, seed=seed, progress=progress)
    t2 = time.perf_counter()
    record = {
        "depth": depth, "model": type(model).__name__, "fingerprint": fingerprint(model),
        "layer_count": int(model.config.get_text_config().num_hidden_layers),
        "train": {"split": "train", "single": single, "grids": grids, "questions": len(train),
                  "images": len(train.features), "seed": seed},
        "dev": {"split": "dev", "single": dev_single, "grids": dev_grids,
                "questions": len(dev)},
        "fit": {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "loss_curve": curve},
        "valid": validate(head, dev),
        "train_fit": validate(head, train)["all"],
        "seconds": {"targets": round(t1 - t0, 1), "fit": round(t2 - t1, 1)},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    save_head(out, head, record)
    return record
