"""Probe: ask the language model itself where the question looks, cheaply, before pruning.

Run the prompt with an evenly spread subset of the visual tokens (every ``stride``-th row and
column of the patch grid) through the language model up to a layer deep in its stack, read
the attention the prompt's last token pays to each probed token there (FastV's signal, at the
depth where the model looks at the part of the image the question names), give every token
the score of the probed token whose block it lies in, and keep the best (the probed token
first within its block). ``share`` of the budget goes by
that score; the rest is spread evenly over the tokens not yet kept (coverage, for questions
about the whole image).

The probe costs a prefill of the text plus ``1 / stride**2`` of the visual tokens through
``depth`` of the layers; its time is in each image's record.
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Visual, VLMMethod, top
from .relevance import choice, fraction, share_of, visual


def _whole(method: str, key: str, value, low: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = low - 1
    if out < low or str(value).strip() not in (str(out), f"{out}.0"):
        raise UsageError(f"{method}: {key} must be a whole number >= {low}, got {value!r}.")
    return out


class Probe(VLMMethod):
    """Keep the tokens the language model's deep layers attend to from the prompt's last
    token, scored on a probe of every ``stride``-th row and column (see the module
    docstring). ``spread="probed"``: the probed tokens first, then the rest of their blocks."""

    name = "probe"
    stages = frozenset({"before"})
    needs = frozenset({"probe", "text"})
    question_aware = True

    def __init__(self, depth: float = 0.7, stride: int = 2, share: float = 1.0,
                 spread: str = "nearest"):
        self.depth = fraction("probe", "depth", depth)
        self.stride = _whole("probe", "stride", stride, 1)
        self.share = fraction("probe", "share", share)
        self.spread = choice("probe", "spread", spread, ("nearest", "probed"))

    def probed(self, v: Visual) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices probed, for each token the position in that list of the probed token
        whose block it lies in): on a patch grid every ``stride``-th row and column, each
        probing the ``stride`` x ``stride`` block it starts; without a grid every
        ``stride**2``-th token, each probing the run it starts."""
        n, s = v.n, self.stride
        if v.grid is not None and v.grid[0] * v.grid[1] == n:
            h, w = v.grid
            rows, cols = torch.arange(0, h, s), torch.arange(0, w, s)
            idx = (rows[:, None] * w + cols[None, :]).flatten()
            block = (torch.arange(h)[:, None] // s) * len(cols) + torch.arange(w)[None, :] // s
            return idx, block.flatten()
        step = s * s
        return torch.arange(0, n, step), torch.arange(n) // step

    def select(self, v: Visual) -> torch.Tensor:
        v = visual(self, v)
        if v.probe is None:
            raise UsageError("VLM method 'probe' needs the pruner's language-model probe "
                             "(stage='before' with question_aware=True).")
        idx, nearest = self.probed(v)
        att = v.probe(idx, self.depth).float()
        score = att[nearest]
        if self.spread == "probed":   # the probed tokens first, then their neighbours
            score = score + (torch.isin(torch.arange(v.n), idx)).float() * (score.max() + 1)
        # (ties keep the earlier token: within a block, the probed one at its top left)
        n_rel = share_of(v.count, self.share)
        keep = top(score, n_rel) if n_rel else torch.zeros(v.n, dtype=torch.bool)
        rest = v.count - int(keep.sum())
        if rest:
            free = (~keep).nonzero().flatten()
            pick = free[torch.linspace(0, len(free) - 1, rest).round().long()]
            keep[pick] = True
        return keep

    def __repr__(self) -> str:
        return (f"Probe(depth={self.depth}, stride={self.stride}, share={self.share}, "
                f"spread={self.spread!r})")

