"""What a vision method sees at a reduction point and what it returns.

A method is a scorer + selector + action on the shared engine: it reads one
:class:`Step` (the block's output tokens and what the attention tap observed) and returns a
:class:`Assignment`: for every patch token, the output slot it goes to (its own slot =
kept, a shared slot = merged, ``-1`` = dropped). The reducer applies it with
:func:`tokensieve.engine.merge.combine`, tracks sizes and keeps prefix tokens untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...engine.diversity import normalized
from ...engine.select import quantise, select_top_k


@dataclass
class Step:
    """One reduction point, patch tokens only (prefix tokens are not shown to methods).

    ``x`` (B, N, C) block outputs; ``x_in`` (B, N, C) the block inputs (if asked for);
    ``sizes`` (B, N) how many original patches each token holds; ``keys`` (B, N, D) the
    attention keys averaged over heads; ``cls_attn`` (B, N) the CLS query's attention over the
    patches, averaged over heads (``None`` without a CLS token); ``n_keep`` the number of
    patch tokens to leave; ``grid`` (h, w) when tokens are still the image's patch grid in
    raster order, else ``None``; ``generator`` seeded randomness.
    """

    x: torch.Tensor
    sizes: torch.Tensor
    n_keep: int
    layer: int
    num_layers: int
    keys: torch.Tensor | None = None
    cls_attn: torch.Tensor | None = None
    x_in: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    generator: torch.Generator | None = None

    @property
    def n(self) -> int:
        return self.x.shape[1]


@dataclass
class Assignment:
    """``slot`` (B, N) long in [0, n_out) or -1; ``weight`` (B, N) extra mixing weight
    (multiplied by sizes), ``None`` = sizes only."""

    slot: torch.Tensor
    n_out: int
    weight: torch.Tensor | None = None


class VisionMethod:
    """Base class. ``needs``: what the tap must observe ("keys", "cls_attn", "x_in").
    ``proportional``: after merging, later attention weighs each token by its size
    (ToMe's proportional attention, a log-size bias on the keys)."""

    name = "base"
    needs: frozenset[str] = frozenset()
    proportional = False

    def assign(self, step: Step) -> Assignment:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ------------------------------------------------------------------- shared building blocks

def keep_mask_to_assignment(keep: torch.Tensor) -> Assignment:
    """Prune: kept tokens get their own slots in order, the rest are dropped."""
    dropped = torch.full_like(keep, -1, dtype=torch.long)
    slot = torch.where(keep, keep.long().cumsum(-1) - 1, dropped)
    return Assignment(slot, int(keep.sum(-1).max()))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    return select_top_k(scores, k)


def merge_into_nearest(keep: torch.Tensor, metric: torch.Tensor) -> Assignment:
    """Kept tokens get their own slots; every other token joins the kept token it is most
    similar to (cosine of ``metric``)."""
    base = keep_mask_to_assignment(keep)
    m = normalized(metric)
    sim = m @ m.transpose(1, 2)                                   # (B, N, N)
    sim = sim.masked_fill(~keep[:, None, :], float("-inf"))
    nearest = quantise(sim).argmax(-1)                           # (B, N) index of a kept token
    slot = torch.where(keep, base.slot, torch.gather(base.slot, 1, nearest))
    return Assignment(slot, base.n_out)


def compose(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Slots after two assignments: ``first`` (B, N) into ``then``'s input slots."""
    out = torch.gather(then, 1, first.clamp_min(0))
    return torch.where(first >= 0, out, first)
