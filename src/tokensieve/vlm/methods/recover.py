"""Text-guided recovery of dropped tokens (Chen et al., "Recoverable Compression: A
Multimodal Vision Token Recovery Mechanism Guided by Text Information", 2024)."""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Visual, VLMMethod, top
from .relevance import add_relevant, choice, fraction, share_of, text_of, visual


class Recover(VLMMethod):
    """First a question-agnostic pick: the tokens the [CLS] attends to most in the tower's
    layer ``layer`` (``score=cls``), or with the largest feature norm (``score=norm``;
    ``auto``: cls when the tower has a [CLS], else norm). Then, with a question, the last
    ``recover`` share of the budget (rounded up) goes to the dropped tokens most similar to a
    text token (cosine to its input embedding)."""

    name = "recover"
    question_aware = True

    def __init__(self, recover: float = 0.5, score: str = "auto", layer: int = -1):
        self.recover = fraction("recover", "recover", recover)
        self.score = choice("recover", "score", score, ("auto", "cls", "norm"))
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise UsageError(f"recover: layer is a vision-tower layer index, got {layer!r}.")
        self.layer = layer
        self.needs = frozenset({"cls_attention"}) if self.score == "cls" else frozenset()
        self.question_aware = self.recover > 0

    def _agnostic(self, v: Visual) -> torch.Tensor:
        use_cls = self.score == "cls" or (self.score == "auto" and v.cls_attention)
        if not use_cls:
            return v.features.float().norm(dim=-1)
        if not v.cls_attention:
            raise UsageError("recover:score=cls needs the [CLS] attention of the vision "
                             "tower; this model has none: use score=norm.")
        if not -len(v.cls_attention) <= self.layer < len(v.cls_attention):
            raise UsageError(f"recover: layer={self.layer} but the vision tower has "
                             f"{len(v.cls_attention)} observed layers.")
        return v.cls_attention[self.layer].float()

    def select(self, v: Visual) -> torch.Tensor:
        v = visual(self, v)
        text = text_of(self, v)
        recovered = share_of(v.count, self.recover) if text is not None else 0
        keep = top(self._agnostic(v).to(v.features.device), v.count - recovered)
        return add_relevant(keep, v.features, text, recovered)

    def __repr__(self) -> str:
        return f"Recover(recover={self.recover:g}, score={self.score!r}, layer={self.layer})"
