"""Learned: keep the tokens a small trained head predicts the language model will look at.

The head (:mod:`tokensieve.vlm.look_head`) was distilled from the attention the prompt's
last token pays to the visual tokens at a deep decoder layer — the ``probe`` method's signal
— so it asks nothing of the language model: its cost is an MLP over the image's tokens.
``share`` of the budget goes by its scores; the rest is spread evenly over the tokens not yet
kept (coverage, as in ``probe``). ``head``: a folder with a head trained for this model
(default: the one shipped for the project's small VLM), or a :class:`LookHead` itself.
"""

from __future__ import annotations

import torch

from .base import Visual, VLMMethod, top
from .relevance import fraction, share_of, text_of, visual


def spread(keep: torch.Tensor, count: int) -> torch.Tensor:
    """``keep`` plus evenly spaced tokens among those not kept, up to ``count`` in all."""
    rest = count - int(keep.sum())
    if rest > 0:
        free = (~keep).nonzero().flatten()
        keep = keep.clone()
        keep[free[torch.linspace(0, len(free) - 1, rest).round().long()]] = True
    return keep


class Learned(VLMMethod):
    """Keep the tokens with the highest predicted deep-layer attention from the question
    (see the module docstring)."""

    name = "learned"
    stages = frozenset({"before"})
    needs = frozenset({"text"})
    question_aware = True

    def __init__(self, head=None, share: float = 1.0):
        self.head = head if head not in (None, "", "default") else None
        self.share = fraction("learned", "share", share)

    def scores(self, v: Visual) -> torch.Tensor:
        """(N,) the head's logits for this image and question."""
        from ..look_head import LookHead, load_head

        text = text_of(self, v)
        if text is None:
            from ...errors import UsageError

            raise UsageError("VLM method 'learned' reads the question; the prompt has no text "
                             "after the image.")
        model = self.head if isinstance(self.head, LookHead) else load_head(self.head)[0]
        return model.scores(v.features, text, v.grid)

    def select(self, v: Visual) -> torch.Tensor:
        v = visual(self, v)
        n_rel = share_of(v.count, self.share)
        keep = top(self.scores(v), n_rel) if n_rel else torch.zeros(v.n, dtype=torch.bool)
        return spread(keep, v.count)

    def __repr__(self) -> str:
        head = self.head if isinstance(self.head, (str, type(None))) else "LookHead"
        return f"Learned(head={head or 'default'}, share={self.share})"
