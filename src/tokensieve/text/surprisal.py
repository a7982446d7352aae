"""Per-token self-information -log p(x_i | x_<i) under a causal LM, over texts of any
length: a window slides over the text and each window starts with the last ``overlap``
tokens of the previous one, so context is carried across window (and sentence) boundaries.
An optional prefix (a question) conditions every window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class TokenSurprisal:
    """Token character offsets (T, 2) into the text and their surprisal in nats (T,).
    ``starts`` (T,): where each token's visible text begins (byte-level BPE tokens such as
    " quick" start at the space before the word); defaults to ``offsets[:, 0]``."""

    offsets: np.ndarray
    surprisal: np.ndarray
    starts: np.ndarray | None = None

    def aggregate(self, spans: np.ndarray, how: str = "sum") -> np.ndarray:
        """Score each [start, end) span from the tokens whose visible text starts inside it
        (or the nearest token before it when none does)."""
        starts = self.offsets[:, 0] if self.starts is None else self.starts
        lo = np.searchsorted(starts, spans[:, 0], side="left")
        hi = np.searchsorted(starts, spans[:, 1], side="left")
        csum = np.r_[0.0, np.cumsum(self.surprisal)]
        count = hi - lo
        total = csum[hi] - csum[lo]
        # spans that contain no token start (a token covering several words): borrow it
        empty = count == 0
        if empty.any():
            j = np.clip(lo[empty] - 1, 0, len(starts) - 1)
            total[empty] = self.surprisal[j]
            count[empty] = 1
        if how == "sum":
            return total
        if how == "mean":
            return total / np.maximum(count, 1)
        if how == "max":
            out = np.empty(len(spans))
            for k, (a, b) in enumerate(zip(lo, hi, strict=True)):
                out[k] = self.surprisal[a:b].max() if b > a else total[k]
            return out
        raise ValueError(f"unknown aggregate {how!r}")


@torch.inference_mode()
def token_surprisal(
    model,
    tokenizer,
    text: str,
    *,
    prefix: str | None = None,
    window: int = 1024,
    overlap: int = 128,
    progress: bool | None = None,
) -> TokenSurprisal:
    """Surprisal of every token of ``text`` given all text before it (up to ``window``
    tokens back) and, if given, ``prefix`` in front of every window."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    offsets = np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    head: list[int] = []
    if tokenizer.bos_token_id is not None:
        head.append(int(tokenizer.bos_token_id))
    if prefix:
        head += tokenizer(prefix, add_special_tokens=False)["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None) or window
    window = max(64, min(window, int(limit) - len(head)))
    overlap = min(overlap, window // 2)
    n = len(ids)
    out = np.full(n, np.nan)
    device = next(model.parameters()).device
    bar = tqdm(total=n, unit="tok", desc="scoring", delay=2.0, disable=progress is False,
               leave=False)
    start = 0
    while start < n:
        ctx_start = max(0, start - overlap)
        end = min(n, ctx_start + window)
        piece = head + ids[ctx_start:end]
        x = torch.tensor([piece], device=device)
        # no KV cache: each window is one forward pass and nothing is generated after it
        logits = model(input_ids=x, use_cache=False).logits[0]
        # predictions for tokens first .. len(piece)-1 (the very first token of a window
        # with no BOS and no prefix has none); only those rows go to float, and the
        # log-softmax is folded into cross_entropy, so no extra (T, vocab) copy is kept
        first = len(head) + (start - ctx_start)  # position of token `start` in piece
        lo = max(first, 1)
        nll = torch.nn.functional.cross_entropy(logits[lo - 1 : len(piece) - 1].float(),
                                                x[0, lo:], reduction="none")
        del logits
        out[start + (lo - first) : end] = nll.cpu().numpy()
        bar.update(end - start)
        start = end
    bar.close()
    if np.isnan(out).any():
        fill = np.nanmedian(out) if (~np.isnan(out)).any() else 0.0
        out = np.where(np.isnan(out), fill, out)
    return TokenSurprisal(offsets, out, visible_starts(text, offsets))


def visible_starts(text: str, offsets: np.ndarray) -> np.ndarray:
    """Each token's start moved past its leading whitespace (kept when it is all space)."""
    starts = offsets[:, 0].copy()
    for i, (a, b) in enumerate(offsets):
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            starts[i] = a
    return starts
