"""Training the small VLM's projector (``tokensieve vlm train``), on CPU, from a seed.

The vision tower and the language model stay frozen, so the tower's features of every training
image are computed once and cached (float16, ``cache_dir()/vlm/features-*.npy``); a step then
runs only the projector and the language model: the projected features replace the ``<image>``
tokens' embeddings (as Llava's forward does) and the loss is on the answer tokens and the
closing ``<|im_end|>``. A step takes ``batch_size`` images with all their questions, packed
into one row per image (:func:`pack`: the 256 image tokens once, then each question as a
segment that sees them and itself), drawn by a seeded permutation per epoch that depends only
on the step, so a run resumed from its checkpoint (``cache_dir()/vlm/checkpoints``) continues
exactly. Writes the projector and a JSON record (steps, seed, data counts, loss curve,
seconds) into ``out``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..assets.cache import cache_dir
from ..errors import UsageError
from ..models.llava_small import (
    END_OF_TURN,
    IMAGE_TOKEN,
    NUM_VISUAL_TOKENS,
    PROJECTOR_FILE,
    RECORD_FILE,
    save_projector,
)
from . import vlm_data

PROJECTOR_NAME = PROJECTOR_FILE.name
RECORD_NAME = RECORD_FILE.name
AUTOCAST = ("bf16", "none")
MAX_STEPS = 1_000_000
MAX_BATCH = 256


@dataclass
class TrainConfig:
    """One training run; ``time_limit`` (seconds) stops it early with a checkpoint."""

    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 50
    seed: int = 0
    threads: int = 1
    time_limit: float | None = None
    n_single: int = 3000
    n_grid: int = 3000
    out: str = str(PROJECTOR_FILE.parent)
    resume: bool = True
    autocast: str = "bf16"
    checkpoint_every: int = 25
    log_every: int = 10
    lora_rank: int = 0
    standardize: bool = True
    align_epochs: int = 0
    questions: str = "one"
    init: str | None = None
    align_weight: float = 0.0
    read_steps: int = 0
    stop_after: int | None = None

    def check(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise UsageError(f"--steps must be 1..{MAX_STEPS}, got {self.steps}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UsageError(f"--batch-size must be 1..{MAX_BATCH}, got {self.batch_size}")
        if not 1 <= self.threads <= 256:
            raise UsageError(f"--threads must be 1..256, got {self.threads}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise UsageError(f"--time-limit must be > 0 seconds, got {self.time_limit}")
        if not (0 < self.lr < 1):
            raise UsageError(f"--lr must be in (0, 1), got {self.lr}")
        if self.autocast not in AUTOCAST:
            raise UsageError(f"--autocast must be one of {', '.join(AUTOCAST)}, "
                             f"not {self.autocast!r}")
        if self.n_single + self.n_grid < 1:
            raise UsageError("training needs at least one image (--single / --grids)")
        if not 0 <= self.align_epochs <= 100:
            raise UsageError(f"--align-epochs must be 0..100, got {self.align_epochs}")
        if not 0 <= self.lora_rank <= 256:
            raise UsageError(f"--lora-rank must be 0 (no LoRA) .. 256, got {self.lora_rank}")
        if not 0.0 <= self.align_weight <= 100.0:
            raise UsageError(f"--align-weight must be 0..100, got {self.align_weight}")
        if not 0 <= self.read_steps <= MAX_STEPS:
            raise UsageError(f"--read-steps must be 0..{MAX_STEPS}, got {self.read_steps}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise UsageError(f"--stop-after must be 1..--steps ({self.steps}), got "
                             f"{self.stop_after}")
        if self.read_steps and not self.lora_rank:
            raise UsageError("--read-steps trains the language model's adapters: give "
                             "--lora-rank too (or --read-steps 0)")
        if self.questions not in vlm_data.QUESTION_SETS:
            raise UsageError(f"--questions must be one of {', '.join(vlm_data.QUESTION_SETS)}"
                             f", not {self.questions!r}")
        if self.init is not None and not Path(self.init).is_file():
            raise UsageError(f"--init {self.init}: no such file (give a projector "
                             ".safetensors written by `tokensieve vlm train`)")

    def run_key(self, data_key: str) -> str:
        """What a checkpoint must match to be resumed (``steps`` and limits may change)."""
        keep = {k: getattr(self, k) for k in ("batch_size", "lr", "warmup", "seed", "autocast")}
        if self.lora_rank or self.standardize:  # keys of older runs stay as they were
            keep.update(lora_rank=self.lora_rank, standardize=self.standardize)
        if self.align_epochs:
            keep.update(align_epochs=self.align_epochs)
        if self.questions != "one":
            keep.update(questions=self.questions)
        if self.align_weight:
            keep.update(align_weight=self.align_weight)
        if self.read_steps:
            keep.update(read_steps=self.read_steps)
        if self.init is not None:
            keep.update(init=hashlib.sha256(Path(self.init).read_bytes()).hexdigest()[:16])
        blob = json.dumps({"data": data_key, "batching": "packed images", **keep},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- features


def vision_features(model, pixel_values):
    """The tower's features that Llava projects: hidden state ``vision_feature_layer``
    without the [CLS] token (strategy "default"), B x 256 x 384."""
    cfg = model.config
    out = model.model.vision_tower(pixel_values.to(model.device, model.dtype),
                                   output_hidden_states=True, return_dict=True)
    feats = out.hidden_states[cfg.vision_feature_layer]
    return feats[:, 1:] if cfg.vision_feature_select_strategy == "default" else feats


def _tower_tag(model) -> str:
    cfg = model.config
    blob = json.dumps({"vision": cfg.vision_config.to_dict(), "layer": cfg.vision_feature_layer,
                       "strategy": cfg.vision_feature_select_strategy}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def feature_cache(model, processor, data: vlm_data.VLMData, *, batch_size: int = 16,
                  folder: Path | None = None, progress: bool = True) -> np.ndarray:
    """The tower's features of every image of ``data`` (N x 256 x 384, float16, memory-mapped),
    computed once through the processor and cached under ``folder`` (default
    ``cache_dir()/vlm``)."""
    import torch
    from tqdm.auto import tqdm

    folder = Path(folder) if folder else cache_dir() / "vlm"
    path = folder / f"features-{data.key()}-{_tower_tag(model)}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    folder.mkdir(parents=True, exist_ok=True)
    n = len(data.layouts)
    dim = model.config.vision_config.hidden_size
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                        shape=(n, NUM_VISUAL_TOKENS, dim))
        bar = tqdm(total=n, desc="vision features", unit="img", disable=not progress)
        with torch.no_grad():
            for start in range(0, n, batch_size):
                idx = range(start, min(n, start + batch_size))
                pixels = processor.image_processor(list(data.images(idx)),
                                                   return_tensors="pt")["pixel_values"]
                arr[start:start + len(idx)] = vision_features(model, pixels).float().cpu() \
                    .numpy().astype(np.float16)
                bar.update(len(idx))
        bar.close()
        arr.flush()
        del arr
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- tokens


def prompt_text(processor, question: str) -> str:
    """The chat prompt of one image and a question, ending with the assistant's turn."""
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode(processor, question: str, answer: str | None = None) -> tuple[list[int], int]:
    """(token ids, prompt length): the prompt with ``<image>`` expanded to its 256 tokens (as
    the processor expands it), then the answer and ``<|im_end|>`` when given."""
    tok = processor.tokenizer
    text = prompt_text(processor, question).replace(IMAGE_TOKEN, IMAGE_TOKEN * NUM_VISUAL_TOKENS)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_prompt = len(ids)
    if answer is not None:
        ids = ids + tok(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return ids, n_prompt


def collate(encoded: list[tuple[list[int], int]], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels); labels only on the answer tokens."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (seq, n_prompt) in enumerate(encoded):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
        labels[row, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def pack(groups: list[list[tuple[list[int], int]]], pad_id: int, sdpa: bool = True):
    """Several questions about one image in one row: the tokens all its prompts share (the
    image) once, then each question + answer as a segment that sees the shared part and
    itself only, at the positions it would have alone. Returns right-padded (input_ids, 4-D
    attention mask, position_ids, labels); the answer loss equals the unpacked one's."""
    import torch

    rows = []
    for seqs in groups:
        shared = min(len(s) for s, _ in seqs)
        for s, _ in seqs[1:]:
            shared = next((j for j in range(shared) if s[j] != seqs[0][0][j]), shared)
        ids, pos, lab, seg = list(seqs[0][0][:shared]), list(range(shared)), [], [0] * shared
        lab = [t if j >= seqs[0][1] else -100 for j, t in enumerate(ids)]
        for i, (s, n_prompt) in enumerate(seqs, start=1):
            tail = s[shared:]
            if tail and shared >= n_prompt:
                raise ValueError("an answer token would fall into the shared prefix")
            ids += tail
            pos += list(range(shared, len(s)))
            lab += [t if shared + k >= n_prompt else -100 for k, t in enumerate(tail)]
            seg += [i] * len(tail)
        rows.append((ids, pos, lab, seg))
    width = max(len(r[0]) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)
    for r, (i_, p_, l_, s_) in enumerate(rows):
        ids[r, :len(i_)] = torch.tensor(i_)
        pos[r, :len(p_)] = torch.tensor(p_)
        labels[r, :len(l_)] = torch.tensor(l_)
        seg[r, :len(s_)] = torch.tensor(s_)
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (k != -1) & ((k == 0) | (k == q))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows see themselves (no NaN)
    mask = allowed[:, None]
    if not sdpa:  # eager attention adds the mask
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    return ids, mask, pos, labels


def feature_stats(features, n_images: int = 512):
    """(mean, std) per feature dimension over the first ``n_images`` images' tokens (float32
    tensors; std floored at 1e-3): the projector trains on standardised features, and
    :func:`..models.llava_small.projector_state` folds the two back into its first layer."""
    import torch

    x = torch.from_numpy(np.asarray(features[:n_images], dtype=np.float32))
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0), x.std(0).clamp_min(1e-3)


def match_output_scale(model, sample) -> float:
    """Scale the projector's last layer so its outputs on ``sample`` (standardised features)
    have the spread of the language model's token embeddings (a fresh projector's are several
    times larger, and the frozen model reads such tokens as noise); returns the factor."""
    import torch

    proj = model.model.multi_modal_projector
    with torch.no_grad():
        target = model.get_input_embeddings().weight.float().std()
        out = proj(sample.to(next(proj.parameters()).dtype)).float()
        factor = float(target / out.std().clamp_min(1e-6))
        proj.linear_2.weight.mul_(factor)
        proj.linear_2.bias.mul_(factor)
    return factor


def batch_loss(model, features, ids, mask, labels, position_ids=None, aux=None,
               projected: bool = False):
    """The answer-token loss with ``features`` (B x 256 x D, the tower's) projected into the
    ``<image>`` positions; ``aux(projected)`` is added when given (a loss on the projector's
    output, e.g. the alignment loss). ``projected=True``: ``features`` already are the visual
    tokens (the reading stage's phrase embeddings) and skip the projector."""
    import torch

    embeds = model.get_input_embeddings()(ids)
    image = torch.as_tensor(features).to(embeds.device, torch.float32)
    if not projected:
        image = model.model.multi_modal_projector(image)
    extra = aux(image) if aux is not None else 0.0
    where = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    if int(where[..., 0].sum()) != image.shape[0] * image.shape[1]:
        raise ValueError("the <image> tokens do not match the image features")
    embeds = embeds.masked_scatter(where, image.to(embeds.dtype))
    return model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                 labels=labels).loss + extra


# --------------------------------------------------------------------------- training


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Example indices of ``step``: consecutive slices of a seeded permutation per epoch."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(pos // n):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth over ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


LORA_LR_SCALE = 0.2  # adapters move the frozen model's own weights: a gentler step


def make_optimizer(model, lr: float):
    """AdamW over the projector (``lr``) and any LoRA adapters (``lr * LORA_LR_SCALE``)."""
    import torch

    groups = [{"params": list(model.model.multi_modal_projector.parameters()), "scale": 1.0}]
    lora = list(_lora_params(model).values())
    if lora:
        groups.append({"params": lora, "scale": LORA_LR_SCALE})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    examples: int = 0
    losses: list[float] = field(default_factory=list)
    align: dict = field(default_factory=dict)
    read: dict = field(default_factory=dict)


def questions_by_image(data: vlm_data.VLMData) -> list[list[vlm_data.Example]]:
    """The questions of each image (images with none left out), in image order."""
    out: dict[int, list] = {}
    for ex in data.examples:
        out.setdefault(ex.image, []).append(ex)
    return [out[i] for i in sorted(out)]


def train_steps(model, processor, data: vlm_data.VLMData, features, cfg: TrainConfig,
                state: TrainState, optimizer, *, until: int, deadline: float | None = None,
                on_step=None, progress: bool = True, standardize=None,
                align=None, tokens=None) -> TrainState:
    """Run steps ``state.step`` .. ``until`` - 1 (or to ``deadline``, a ``time.monotonic``
    value), updating the projector (and LoRA adapters, if any); ``on_step(state)`` after each
    step. A step takes ``cfg.batch_size`` images with all their questions, packed one row per
    image; ``standardize`` = (mean, std) applied to the features first; ``align`` (a
    :class:`~.vlm_align.AlignmentTargets`) adds ``cfg.align_weight`` x its loss on the
    projected tokens, so they keep naming their cell (where and what) while the LM learns.
    ``tokens(images)``, when given, supplies the visual tokens themselves (the reading stage:
    no features, no projector)."""
    import torch
    from tqdm.auto import tqdm

    pad = processor.tokenizer.pad_token_id
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.autocast == "bf16"
           and model.device.type == "cpu" else torch.autocast(model.device.type,
                                                              enabled=False))
    model.train(False)
    by_image = questions_by_image(data)
    sdpa = model.model.language_model.config._attn_implementation == "sdpa"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(total=until, initial=state.step, desc="train", unit="step", disable=not progress)
    while state.step < until:
        if deadline is not None and state.step > 0 and state.losses:
            per_step = state.seconds / max(1, len(state.losses))
            if time.monotonic() + per_step > deadline:
                break
        t0 = time.monotonic()
        images = batch_indices(state.step, cfg.batch_size, len(by_image), cfg.seed)
        groups = [[encode(processor, e.question, e.answer) for e in by_image[i]] for i in images]
        ids, mask, pos, labels = pack(groups, pad, sdpa)
        which = [by_image[i][0].image for i in images]
        if tokens is not None:
            feats = tokens(which)
        else:
            feats = torch.from_numpy(np.stack([np.asarray(features[j], dtype=np.float32)
                                               for j in which]))
        if standardize is not None and tokens is None:
            feats = (feats - standardize[0]) / standardize[1]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(state.step, cfg) * group.get("scale", 1.0)
        aux = None
        if align is not None and cfg.align_weight and tokens is None:

            def aux(projected, which=which):
                return cfg.align_weight * align.loss(projected, which)[0]
        with ctx:
            loss = batch_loss(model, feats, ids.to(model.device),
                              mask.to(model.device), labels.to(model.device),
                              pos.to(model.device), aux=aux, projected=tokens is not None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        state.step += 1
        state.seconds += time.monotonic() - t0
        state.losses.append(float(loss.detach()))
        state.examples += sum(len(g) for g in groups)
        bar.set_postfix(loss=f"{np.mean(state.losses[-cfg.log_every:]):.3f}")
        bar.update(1)
        if on_step is not None:
            on_step(state)
    bar.close()
    return state


def read_stage(model, processor, data: vlm_data.VLMData, cfg: TrainConfig, *,
                deadline: float | None = None, progress: bool = True) -> dict:
    """The reading stage: ``cfg.read_steps`` steps that train only the LoRA adapters (at
    ``cfg.lr``) on the answer loss with each visual token set to its cell's phrase embedding
    (:class:`~.vlm_align.AlignmentTargets`: "top left sneaker" for a grid's quadrant), so the
    language model learns to read where and what a token says before the projector has to
    write it. It reads the grids only (a single image's tokens are its word: nothing to
    learn there). Returns {"steps", "lr", "seconds", "loss_curve"}."""
    import dataclasses

    import torch

    from .vlm_align import AlignmentTargets

    goal = AlignmentTargets(model, processor.tokenizer, data)
    grids = dataclasses.replace(data, examples=[e for e in data.examples
                                                if len(data.layouts[e.image]) == 4])

    def tokens(images):
        return goal.targets[goal.labels[torch.as_tensor(images, dtype=torch.long)]]

    optimizer = torch.optim.AdamW(list(_lora_params(model).values()), lr=cfg.lr,
                                  weight_decay=0.0)
    rcfg = dataclasses.replace(cfg, steps=cfg.read_steps, align_weight=0.0,
                               warmup=min(cfg.warmup, max(1, cfg.read_steps // 10)))
    state = train_steps(model, processor, grids if grids.examples else data, None, rcfg,
                        TrainState(), optimizer, until=cfg.read_steps, deadline=deadline,
                        progress=progress, tokens=tokens)
    return {"steps": state.step, "lr": cfg.lr, "seconds": round(state.seconds, 1),
            "loss_curve": loss_curve(state.losses, cfg.log_every)}


def loss_curve(losses: list[float], every: int) -> list[list[float]]:
    """[[step, mean loss of the ``every`` steps ending there], ...]."""
    return [[min(len(losses), i + every), round(float(np.mean(losses[i:i + every])), 4)]
            for i in range(0, len(losses), every)]


def init_from(model, path, *, standardize=None, lora_rank: int = 0, seed: int = 0) -> None:
    """Start from a projector file written by :func:`save_projector` (to train on): its
    projector is unfolded back to standardised inputs when ``standardize`` = (mean, std) is
    given (the exact inverse of the fold), and its LoRA adapters become trainable adapters
    again (``lora_rank`` must match theirs; a file without adapters gets fresh ones)."""
    import torch
    from safetensors.torch import load_file

    from ..models.llava_small import PROJECTOR_PREFIX
    from ..models.lora import LORA_PREFIX, LoRALinear, add_lora

    state = load_file(str(path))
    proj = {k.removeprefix(PROJECTOR_PREFIX): v.float() for k, v in state.items()
            if k.startswith(PROJECTOR_PREFIX)}
    lora = {k.removeprefix(LORA_PREFIX): v for k, v in state.items()
            if k.startswith(LORA_PREFIX) and k != LORA_PREFIX + "scale"}
    target = model.model.multi_modal_projector
    if set(proj) != set(target.state_dict()):
        raise UsageError(f"--init {path} is not a projector for this model (holds "
                         f"{sorted(proj)})")
    if standardize is not None:
        mean, std = (t.float() for t in standardize)
        w = proj["linear_1.weight"]
        proj["linear_1.bias"] = proj["linear_1.bias"] + w @ mean
        proj["linear_1.weight"] = w * std[None, :]
    dtype = next(target.parameters()).dtype
    target.load_state_dict({k: v.to(dtype) for k, v in proj.items()})
    if lora and not lora_rank:
        raise UsageError(f"--init {path} holds LoRA adapters: pass --lora-rank to keep "
                         "training them")
    if not lora_rank:
        return
    lm = model.model.language_model
    add_lora(lm, lora_rank, seed=seed)
    if not lora:
        return
    modules = dict(lm.named_modules())
    wrapped = {p for p, m in modules.items() if isinstance(m, LoRALinear)}
    if {k[:-2] for k in lora} != wrapped:
        raise UsageError(f"--init {path}: its LoRA adapters sit on other layers than "
                         "--lora-rank adds here")
    scale = state.get(LORA_PREFIX + "scale")
    if scale is not None and abs(float(scale.reshape(-1)[0]) - modules[next(iter(wrapped))]
                                 .scale) > 1e-6:
        raise UsageError(f"--init {path}: its adapters' scale differs from this run's")
    with torch.no_grad():
        for p in wrapped:
            a, b = lora[p + ".A"], lora[p + ".B"]
            if a.shape != modules[p].lora_A.shape:
                raise UsageError(f"--init {path}: its adapters have rank {a.shape[0]}, "
                                 f"not --lora-rank {lora_rank}")
            modules[p].lora_A.copy_(a)
            modules[p].lora_B.copy_(b)


def init_provenance(path) -> dict:
    """Where an ``--init`` run started: the file's name and sha256, and the training record
    saved next to it (if any), so a shipped record tells every phase that made it."""
    path = Path(path)
    out = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    record = path.parent / RECORD_NAME
    if record.is_file():
        out["record"] = json.loads(record.read_text())
    return out


def _checkpoint_path(key: str) -> Path:
    return cache_dir() / "vlm" / "checkpoints" / f"projector-{key}.pt"


def _lora_params(model) -> dict:
    return {n: p for n, p in model.model.language_model.named_parameters() if "lora_" in n}


def _save_checkpoint(path: Path, model, optimizer, state: TrainState) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"projector": model.model.multi_modal_projector.state_dict(),
                "lora": {n: p.detach() for n, p in _lora_params(model).items()},
                "optimizer": optimizer.state_dict(), "state": asdict(state)}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model, optimizer) -> TrainState:
    import torch

    ck = torch.load(path, map_location=model.device, weights_only=True)
    model.model.multi_modal_projector.load_state_dict(ck["projector"])
    params = _lora_params(model)
    if set(ck.get("lora", {})) != set(params):
        raise UsageError(f"checkpoint {path} holds other LoRA adapters than this run; "
                         "pass --fresh to start afresh")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ck["lora"][n])
    optimizer.load_state_dict(ck["optimizer"])
    return TrainState(**ck["state"])


def train(cfg: TrainConfig, *, progress: bool = True, model=None, processor=None) -> dict:
    """Train the projector as ``cfg`` says (resuming a matching checkpoint unless
    ``cfg.resume`` is False) and write it with its record into ``cfg.out``; returns the
    record."""
    import torch

    from ..models.llava_small import build_small_vlm

    cfg.check()
    started = time.monotonic()
    deadline = started + cfg.time_limit if cfg.time_limit else None
    torch.set_num_threads(cfg.threads)
    if model is None:
        model, processor = build_small_vlm(seed=cfg.seed)
    data = vlm_data.build("train", cfg.n_single, cfg.n_grid, seed=cfg.seed,
                          questions=cfg.questions)
    t0 = time.monotonic()
    features = feature_cache(model, processor, data, progress=progress)
    feature_seconds = time.monotonic() - t0
    stats = feature_stats(features) if cfg.standardize else None
    if cfg.init is not None:
        init_from(model, cfg.init, standardize=stats, lora_rank=cfg.lora_rank, seed=cfg.seed)
    elif stats is not None:
        sample = torch.from_numpy(np.asarray(features[:64], dtype=np.float32))
        match_output_scale(model, (sample - stats[0]) / stats[1])
    if cfg.lora_rank and cfg.init is None:
        from ..models.lora import add_lora

        add_lora(model.model.language_model, cfg.lora_rank, seed=cfg.seed)
    optimizer = make_optimizer(model, cfg.lr)
    ck_path = _checkpoint_path(cfg.run_key(data.key()))
    state = TrainState()
    if cfg.resume and ck_path.is_file():
        state = _load_checkpoint(ck_path, model, optimizer)
    else:
        if cfg.read_steps:
            state.read = read_stage(model, processor, data, cfg, deadline=deadline,
                                    progress=progress)
            _save_checkpoint(ck_path, model, optimizer, state)
    if not state.step and not state.align and cfg.align_epochs:
        from .vlm_align import align

        t1 = time.monotonic()
        state.align = align(model, processor.tokenizer, data, features, standardize=stats,
                            epochs=cfg.align_epochs, lr=cfg.lr, seed=cfg.seed,
                            progress=progress)
        state.align["seconds"] = round(time.monotonic() - t1, 1)
        _save_checkpoint(ck_path, model, optimizer, state)

    def on_step(s: TrainState) -> None:
        if s.step % cfg.checkpoint_every == 0:
            _save_checkpoint(ck_path, model, optimizer, s)

    goal = None
    if cfg.align_weight:
        from .vlm_align import AlignmentTargets

        goal = AlignmentTargets(model, processor.tokenizer, data)
    until = cfg.steps if cfg.stop_after is None else cfg.stop_after
    state = train_steps(model, processor, data, features, cfg, state, optimizer,
                        until=until, deadline=deadline, on_step=on_step, progress=progress,
                        standardize=stats, align=goal)
    _save_checkpoint(ck_path, model, optimizer, state)
    out = Path(cfg.out)
    record = {
        "model": "LlavaForConditionalGeneration: DINOv2-S/14 (frozen, layer "
                 f"{model.config.vision_feature_layer}, no CLS) + 2-layer MLP projector "
                 "(trained) + SmolLM2-135M-Instruct ("
                 + (f"LoRA rank {cfg.lora_rank} on q/v/o, merged at load)" if cfg.lora_rank
                    else "frozen)"),
        "config": {k: v for k, v in asdict(cfg).items()
                   if k not in ("out", "resume") and (k != "stop_after" or v is not None)},
        "steps_done": state.step, "finished": state.step >= cfg.steps,
        "images_seen": state.step * cfg.batch_size, "questions_seen": state.examples,
        "data": {"split": "train", "key": data.key(), **data.counts(), "spec": data.spec},
        "seconds_training": round(state.seconds, 1),
        "seconds_per_step": round(state.seconds / max(1, len(state.losses)), 3),
        "seconds_features_this_run": round(feature_seconds, 1),
        "torch": torch.__version__, "threads": cfg.threads,
        "loss_curve": loss_curve(state.losses, cfg.log_every),
        "checkpoint": ck_path.name, "align": state.align,
        **({"read": state.read} if state.read else {}),
    }
    if cfg.init is not None:
        record["config"]["init"] = Path(cfg.init).name
        record["init"] = init_provenance(cfg.init)
    out.mkdir(parents=True, exist_ok=True)
    save_projector(model, out / PROJECTOR_NAME,
                   metadata={"steps": str(state.step), "seed": str(cfg.seed),
                             "lora_rank": str(cfg.lora_rank)}, standardize=stats)
    (out / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return record
