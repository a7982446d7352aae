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
from .relevance import fraction, share_of, spread, visual, whole


class Probe(VLMMethod):
    """Keep the tokens the language model's deep layers attend to from the prompt's last
    token, scored on a probe of every ``stride``-th row and column (see the module
    docstring)."""

    name = "probe"
    stages = frozenset({"before"})
    needs = frozenset({"probe", "text"})
    question_aware = True

    def __init__(self, depth: float = 0.7, stride: int = 2, share: float = 1.0):
        self.depth = fraction("probe", "depth", depth)
        self.stride = whole("probe", "stride", stride)
        self.share = fraction("probe", "share", share)

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
        idx, block = self.probed(v)
        att = v.probe(idx, self.depth).float()
        score = att[block]   # ties keep the earlier token: a block's probed one first
        n_rel = share_of(v.count, self.share)
        keep = top(score, n_rel) if n_rel else torch.zeros(v.n, dtype=torch.bool)
        return spread(keep, v.count)

    def __repr__(self) -> str:
        return f"Probe(depth={self.depth}, stride={self.stride}, share={self.share})"

