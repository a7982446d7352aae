"""DART: keep the tokens that duplicate least (Wen et al., "Stop Looking for Important
Tokens in Multimodal Language Models: Duplication Matters More", 2025)."""

from __future__ import annotations

import torch

from ...engine.diversity import duplication
from .base import Inside, Visual, VLMMethod, top
from .relevance import counted, whole


class DART(VLMMethod):
    """A few pivot tokens (the largest L2 norms), then the pivots and the tokens least
    duplicated by them (lowest highest cosine similarity to any pivot). Reads the visual
    tokens the language model receives (``features``) before it, their hidden states
    (``hidden``) inside it. ``pivots``: how many (at most the count kept)."""

    name = "dart"
    stages = frozenset({"before", "inside"})

    def __init__(self, pivots: int = 8):
        self.pivots = whole("dart", "pivots", pivots)

    def select(self, v: Visual | Inside) -> torch.Tensor:
        counted(self, v)
        x = v.features if isinstance(v, Visual) else v.hidden
        p = min(self.pivots, v.count)
        pivot = top(x.float().norm(dim=-1), p).nonzero().flatten()      # (P,) in order
        return top(-duplication(x[None], pivot[None])[0], v.count)

    def __repr__(self) -> str:
        return f"DART(pivots={self.pivots})"
