"""ToDRE: token diversity, then task relevance (Li et al., "ToDRE: Visual Token Pruning via
Diversity and Task Awareness for Efficient Large Vision-Language Models", 2025)."""

from __future__ import annotations

import torch

from ...engine.diversity import k_center
from ...engine.select import quantise
from .base import Visual, VLMMethod
from .relevance import add_relevant, fraction, share_of, text_of, visual


class ToDRE(VLMMethod):
    """Greedy k-center on the visual tokens (cosine distance), starting from the token the
    [CLS] attends to most in the tower's last layer (the largest-norm token without a [CLS]).
    With a question, the last ``relevance`` share of the budget (rounded up) goes instead to
    the tokens left out that are most similar to a text token (cosine to its input
    embedding); without one, k-center takes the whole budget."""

    name = "todre"
    question_aware = True

    def __init__(self, relevance: float = 0.25):
        self.relevance = fraction("todre", "relevance", relevance)
        self.question_aware = self.relevance > 0

    def select(self, v: Visual) -> torch.Tensor:
        v = visual(self, v)
        text = text_of(self, v)
        relevant = share_of(v.count, self.relevance) if text is not None else 0
        keep = torch.zeros(v.n, dtype=torch.bool, device=v.features.device)
        diverse = v.count - relevant
        if diverse:
            start = (v.cls_attention[-1] if v.cls_attention else v.features.float().norm(dim=-1))
            first = quantise(start.float()).argmax()[None]
            keep = k_center(v.features[None], diverse, first.to(keep.device))[0]
        return add_relevant(keep, v.features, text, relevant)

    def __repr__(self) -> str:
        return f"ToDRE(relevance={self.relevance:g})"
