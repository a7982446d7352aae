"""A cheap first stage for the small VLM's projector: align visual tokens with words.

Training the projector only through the language model's answer loss starts slowly: the loss
first falls to the answer prior (which words are likely for a question type) and the signal
that ties an image to its word is weak while the projected tokens are still noise to the
frozen model; a grid's corner questions also need each token to say where it lies. This
stage gives the projector a start the language model can read: every visual token is
regressed onto the mean input embedding of its cell's phrase (a single image's class word;
a grid quadrant's corner and word, "top left sneaker"), by mean squared error relative to
the embeddings' variance plus a cross-entropy that makes its own phrase the nearest by
cosine. It needs no language-model forward: a few epochs over the cached tower features
take a minute or two on CPU. The answer-loss training (:mod:`.vlm_train`) starts from it.
"""

from __future__ import annotations

import numpy as np

from ..models.llava_small import NUM_VISUAL_TOKENS
from . import vlm_data

GRID_SIDE = int(NUM_VISUAL_TOKENS ** 0.5)  # 16 patches a side
TEMPERATURE = 0.05  # of the cosine logits against the words' embeddings


def word_embeddings(model, tokenizer, words: list[str]):
    """Mean input embedding of each word's tokens, as the word is written as an answer."""
    import torch

    table = model.get_input_embeddings().weight.detach().float()
    out = []
    for w in words:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        out.append(table[torch.tensor(ids)].mean(0))
    return torch.stack(out)


def cell_phrases(layout) -> list[str]:
    """What each cell of a layout is aligned to: a single image's class word; a grid cell's
    corner and word ("top left sneaker"), so that where a token lies is part of what it says."""
    if len(layout) == 1:
        return [layout[0].word]
    return [f"{corner} {s.word}" for corner, s in zip(vlm_data.CORNERS, layout, strict=True)]


def token_labels(data: vlm_data.VLMData) -> tuple[np.ndarray, list[str]]:
    """(labels, phrases): per image and visual token (row-major 16 x 16 patches) the index
    into ``phrases`` of its cell's phrase (:func:`cell_phrases`), N x 256 int64."""
    side = GRID_SIDE
    rows, cols = np.divmod(np.arange(side * side), side)
    cell = (rows >= side // 2) * 2 + (cols >= side // 2)  # row-major corners, as in vlm_data
    phrases = sorted({p for lay in data.layouts for p in cell_phrases(lay)})
    vocab = {p: i for i, p in enumerate(phrases)}
    out = np.empty((len(data.layouts), side * side), np.int64)
    for i, layout in enumerate(data.layouts):
        ids = np.array([vocab[p] for p in cell_phrases(layout)])
        out[i] = ids[0] if len(layout) == 1 else ids[cell]
    return out, phrases


class AlignmentTargets:
    """The phrase embeddings every visual token is pulled towards, and the loss that pulls:
    MSE to its own phrase's embedding (over the embeddings' variance) plus cross-entropy of
    its cosine similarities to all phrases (temperature ``TEMPERATURE``)."""

    def __init__(self, model, tokenizer, data: vlm_data.VLMData):
        import torch

        labels, self.phrases = token_labels(data)
        self.labels = torch.from_numpy(labels)
        self.targets = word_embeddings(model, tokenizer, self.phrases)
        self.unit = torch.nn.functional.normalize(self.targets, dim=-1)
        self.scale = self.targets.var()

    def loss(self, out, images):
        """(loss, cosine logits, labels) of projector outputs ``out`` (B x 256 x D) of the
        images with indices ``images``."""
        import torch

        y = self.labels[torch.as_tensor(np.asarray(images), dtype=torch.long)]
        out = out.float()
        cos = torch.nn.functional.normalize(out, dim=-1) @ self.unit.t()
        loss = torch.nn.functional.mse_loss(out, self.targets[y]) / self.scale \
            + torch.nn.functional.cross_entropy(cos.flatten(0, 1) / TEMPERATURE, y.flatten())
        return loss, cos, y


def align(model, tokenizer, data: vlm_data.VLMData, features, *, standardize=None,
          epochs: int = 3, lr: float = 1e-3, batch_images: int = 32, seed: int = 0,
          progress: bool = True) -> dict:
    """Fit the projector of ``model`` so each visual token lands on its cell's phrase embedding;
    returns {"loss": last epoch's mean, "token_accuracy": share of tokens whose nearest phrase
    embedding (cosine) is their own, on the last epoch, "phrases": n, ...}."""
    import torch
    from tqdm.auto import tqdm

    goal = AlignmentTargets(model, tokenizer, data)
    proj = model.model.multi_modal_projector
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.0)
    n = len(data.layouts)
    steps = epochs * ((n + batch_images - 1) // batch_images)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    losses, hits, seen = [], 0, 0
    bar = tqdm(total=steps, desc="align projector", unit="step", disable=not progress)
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch, 11]).permutation(n)
        for start in range(0, n, batch_images):
            idx = np.sort(perm[start:start + batch_images])
            x = torch.from_numpy(np.asarray(features[idx], dtype=np.float32))
            if standardize is not None:
                x = (x - standardize[0]) / standardize[1]
            loss, cos, y = goal.loss(proj(x), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if epoch == epochs - 1:
                losses.append(float(loss.detach()))
                with torch.no_grad():
                    near = cos.argmax(-1)
                    hits += int((near == y).sum())
                    seen += y.numel()
    bar.close()
    return {"loss": round(float(np.mean(losses)), 5),
            "token_accuracy": round(hits / max(1, seen), 4), "phrases": len(goal.phrases),
            "epochs": epochs, "lr": lr}
