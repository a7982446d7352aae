"""Policies scored by information: how unpredictable each token was to the model itself.

The LM's surprisal -log p(x_i | x_<i) of every context token comes from the same prefill (the
final hidden states through the output head, in chunks; never a T x vocab tensor at once), so
it costs a fraction of one extra forward. Codes, names and numbers are unpredictable, filler
is not. Tokens are grouped into units (sentences, given as token spans by ``kv.answer``, or
fixed chunks) and a unit is kept or dropped as a whole, ranked by its information; attention
can be mixed in. Every layer keeps the same units (the signal is the model's, not a layer's).
"""

from __future__ import annotations

import torch

from ...engine.select import quantise
from ...scoring.units import unit_reduce
from ..attention import LayerInputs
from .base import Policy


def chunk_units(t: int, chunk: int, device) -> torch.Tensor:
    """(T,) unit index of fixed chunks of ``chunk`` tokens."""
    return torch.arange(t, device=device) // max(1, chunk)


def _rank01(x: torch.Tensor) -> torch.Tensor:
    """Each row's values as ranks in [0, 1] (scale-free, so signals can be mixed); equal
    values share one rank, so the tokens of one unit keep one score. Values are ranked by
    their :func:`~tokensieve.engine.quantise` value, as every selector ranks, so float noise
    (another batch, thread count or kernel) cannot reorder near-equal scores."""
    t = x.shape[-1]
    x = quantise(x)
    ranks = torch.searchsorted(torch.sort(x, dim=-1).values.contiguous(), x.contiguous())
    return ranks.float() / max(1, t - 1)


class Information(Policy):
    """Units ranked by the model's surprisal of their tokens (``reduce``: mean, max or sum
    over the unit), optionally mixed with TOVA-style attention of the last ``window``
    queries (``attention`` in [0, 1] is its weight, on ranks). Units come from
    ``kv.answer`` (sentences) or ``units=`` spans; without them, chunks of ``chunk``."""

    name = "information"
    needs_surprisal = True

    def __init__(self, reduce: str = "mean", attention: float = 0.0, window: int = 8,
                 chunk: int = 16):
        if reduce not in ("mean", "max", "sum"):
            raise TypeError(f"reduce must be mean, max or sum, got {reduce!r}")
        if not 0 <= attention <= 1:
            raise TypeError(f"attention is a weight in [0, 1], got {attention!r}")
        self.reduce, self.attention, self.window, self.chunk = reduce, attention, window, chunk

    def held_window(self, plan_window: int) -> int:
        return self.window if self.attention > 0 else 0

    def score(self, x: LayerInputs) -> torch.Tensor:
        memo = ("information", self.reduce, self.chunk, x.keys.shape[2])
        if self.attention == 0 and memo in x.shared:   # the same for every layer of a pass
            return x.shared[memo][:, None, :].expand(-1, x.keys.shape[1], -1)
        surprisal = x.shared["surprisal"].float()                  # (B, T)
        b, t = surprisal.shape
        units = x.shared.get("units")
        if units is None:   # chunks of the row's real tokens (padding is in no chunk)
            rank = x.shared.get("rank")
            if rank is None:
                units = chunk_units(t, self.chunk, surprisal.device).expand(b, t)
            else:
                units = torch.where(rank >= 0, rank // max(1, self.chunk), -1)
        s = unit_reduce(surprisal, units, self.reduce)
        if self.attention > 0:
            attn = x.window_attention(self.window, reduce="mean")  # (B, H, T)
            attn = unit_reduce(attn.mean(1), units, "mean")
            s = (1 - self.attention) * _rank01(s) + self.attention * _rank01(attn)
        # every token of a unit has the unit's score: the plan breaks the tie by position
        # (the later token first), so a unit cut by the budget keeps its end, without holes
        if self.attention == 0:
            x.shared[memo] = s
        return s[:, None, :].expand(-1, x.keys.shape[1], -1)
