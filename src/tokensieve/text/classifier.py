"""The learned keep-classifier (the LLMLingua-2 idea, trained here): a small head on the
first layers of the embedded all-MiniLM-L6-v2 predicts, from the text alone, how worth
keeping each token is. It needs no question and no causal LM, so it is the fast path of
question-free compression.

The head and its training record ship in ``tokensieve/models/data`` (``text_keep_head.*``);
``tokensieve text-classifier train`` rebuilds them (see :mod:`tokensieve.bench.text_classifier`);
``TOKENSIEVE_KEEP_HEAD=FOLDER`` points the scorer at another trained head.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelNotFoundError
from ..scoring.surprisal import TokenSurprisal
from ..scoring.units import visible_starts

DATA_DIR = Path(__file__).resolve().parents[1] / "models" / "data"
HEAD_NAME = "text_keep_head"
WINDOW = 256        # encoder tokens per window (MiniLM reads up to 512)
OVERLAP = 32        # context carried into the next window; its tokens are scored once
BATCH = 16          # windows per encoder forward

_lock = threading.Lock()
_encoders: dict[int, tuple] = {}
_heads: dict[str, tuple] = {}


class KeepHead(torch.nn.Module):
    """Token state -> keep score (higher = keep): a 2-layer MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(states).squeeze(-1)


def truncated_encoder(layers: int):
    """(tokenizer, model) of MiniLM cut after ``layers`` transformer layers (cached): the
    later layers are never run, so fewer layers are faster."""
    with _lock:
        if layers not in _encoders:
            from transformers import AutoModel, AutoTokenizer

            from ..models.convert import quiet_transformers
            from ..models.minilm import default_encoder_dir

            where = str(default_encoder_dir())
            quiet_transformers()
            tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModel.from_pretrained(where, local_files_only=True,
                                              num_hidden_layers=layers, add_pooling_layer=False)
            _encoders[layers] = (tok, model.eval())
        return _encoders[layers]


def windows(n: int, window: int = WINDOW, overlap: int = OVERLAP) -> list[tuple[int, int, int]]:
    """(start, end, first scored) token ranges covering 0..n: each window after the first
    starts ``overlap`` tokens early and scores only its tokens from ``first`` on."""
    out, first = [], 0
    while first < n or not out:
        start = max(0, first - overlap)
        end = min(n, start + window)
        out.append((start, end, first))
        first = end
        if end >= n:
            break
    return out


@torch.inference_mode()
def token_states(text: str, layers: int, *, batch: int = BATCH, head=None
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """(character offsets (T, 2), encoder states (T, D)) of every MiniLM token of ``text``,
    read in overlapping windows so any length works, linear in the length. With ``head``
    (states -> one value per token) it returns the head's values (T,) instead, applied
    batch by batch, so a long text never holds all its states in memory."""
    tok, model = truncated_encoder(layers)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    offsets = np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    n = len(ids)
    out = torch.zeros(n) if head is not None else torch.zeros(n, model.config.hidden_size)
    if n == 0:
        return offsets, out
    spans = windows(n)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    for b in range(0, len(spans), batch):
        group = spans[b:b + batch]
        width = max(e - s for s, e, _ in group) + 2
        input_ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, (s, e, _) in enumerate(group):
            input_ids[r, :e - s + 2] = torch.tensor([cls, *ids[s:e], sep])
            mask[r, :e - s + 2] = 1
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if head is not None:
            hidden = head(hidden)
        for r, (s, e, first) in enumerate(group):
            out[first:e] = hidden[r, 1 + first - s:1 + e - s]
    return offsets, out


@dataclass
class HeadBundle:
    head: KeepHead
    layers: int
    record: dict


def load_head(folder: str | Path | None = None) -> HeadBundle:
    """The trained head and its record (cached per folder)."""
    folder = Path(folder or os.environ.get("TOKENSIEVE_KEEP_HEAD") or DATA_DIR)
    key = str(folder)
    with _lock:
        if key in _heads:
            return _heads[key]
        weights, record_path = folder / f"{HEAD_NAME}.safetensors", folder / f"{HEAD_NAME}.json"
        if not weights.is_file() or not record_path.is_file():
            raise ModelNotFoundError(
                f"the learned keep-classifier is missing from {folder} ({HEAD_NAME}.safetensors "
                "and .json); rebuild it with: tokensieve text-classifier train")
        from safetensors.torch import load_file

        record = json.loads(record_path.read_text())
        head = KeepHead(record["dim"], record["hidden"])
        head.load_state_dict(load_file(str(weights)))
        bundle = HeadBundle(head.eval(), int(record["layers"]), record)
        _heads[key] = bundle
        return bundle


@torch.inference_mode()
def keep_scores(text: str, head_folder: str | Path | None = None) -> TokenSurprisal:
    """Per MiniLM token of ``text``: its keep score (same container as token surprisal, so
    the scorers aggregate it over any spans the same way)."""
    bundle = load_head(head_folder)
    offsets, values = token_states(text, bundle.layers, head=bundle.head)
    return TokenSurprisal(offsets, values.double().numpy(), visible_starts(text, offsets))
