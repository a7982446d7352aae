"""Per-token signals a selector reads: the cross-entropy and the predictive entropy of each
labelled token, computed from logits, or from hidden states through the LM head in chunks
of rows without gradients (bounded memory), and the :class:`TokenSignals` record that
carries them, flattened over the batch's labelled tokens in row-major order."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError, UsageError

# rows per chunk of the no-grad scoring pass: at most this many logits (float32) at once
CHUNK_LOGITS = 1 << 24


@dataclass
class TokenSignals:
    """The labelled tokens of one batch, flattened row-major (sample by sample, in order).

    ``targets`` (N,): the token each position must predict; ``sample`` / ``position`` (N,):
    where it sits in ``labels`` (``labels[sample, position] == targets``); ``loss`` /
    ``entropy`` (N,) float32 under the current model, ``reference`` (N,) a reference model's
    loss on the same tokens, ``frequency`` (N,) the corpus count of each target token, each
    ``None`` when the method did not ask for it; ``n_samples``: the batch size; ``seed``:
    for seeded methods."""

    targets: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    n_samples: int
    loss: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    frequency: torch.Tensor | None = None
    seed: int = 0

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])


def token_stats(logits: torch.Tensor, targets: torch.Tensor, entropy: bool = False):
    """(cross-entropy, entropy or ``None``) per row of ``logits`` (n, V), in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    ce = -logp.gather(-1, targets[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if entropy else None
    return ce, ent


class Head:
    """The LM head (vocabulary projection) as a callable on rows (n, H) -> (n, V): an
    ``nn.Linear``, any module (the model's output embeddings), or a weight tensor (V, H).
    ``softcap``: logits become ``softcap * tanh(logits / softcap)`` (Gemma 2's final cap)."""

    def __init__(self, head, softcap: float | None = None):
        if torch.is_tensor(head):
            if head.dim() != 2:
                raise InputError(f"head weight must be 2-D (vocab, hidden), got shape "
                                 f"{tuple(head.shape)}.")
            self.fn, self.vocab = (lambda x: F.linear(x, head)), int(head.shape[0])
        elif callable(head):
            w = getattr(head, "weight", None)
            self.fn = head
            self.vocab = int(w.shape[0]) if torch.is_tensor(w) and w.dim() == 2 else None
        else:
            raise InputError(f"head must be the LM head module or its weight tensor, got "
                             f"{type(head).__name__}.")
        self.softcap = softcap

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.fn(rows)
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def score_rows(rows: torch.Tensor, targets: torch.Tensor, head: Head, entropy: bool = False,
               chunk_rows: int | None = None):
    """(cross-entropy, entropy or ``None``) of ``targets`` for hidden ``rows`` (n, H) under
    ``head``, without gradients, ``chunk_rows`` rows at a time (default: about
    :data:`CHUNK_LOGITS` logits per chunk; the vocabulary is taken from the head's weight,
    else the rows' width, as for an identity head on logits)."""
    n = rows.shape[0]
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int)
                                   or chunk_rows <= 0):
        raise UsageError(f"chunk_rows must be a positive whole number of rows, got "
                         f"{chunk_rows!r}.")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_LOGITS // max(head.vocab or rows.shape[-1], 1))
    ces, ents = [], []
    with torch.no_grad():
        for i in range(0, n, chunk_rows):
            ce, ent = token_stats(head(rows[i:i + chunk_rows]), targets[i:i + chunk_rows],
                                  entropy)
            ces.append(ce)
            ents.append(ent)
    empty = rows.new_zeros(0, dtype=torch.float32)
    ce = torch.cat(ces) if ces else empty
    return ce, (torch.cat(ents) if ces else empty) if entropy else None
