"""FastV: after layer k, keep the visual tokens the text attends to most (Chen et al., "An
Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", 2024)."""

from __future__ import annotations

import torch

from .base import Inside, VLMMethod, top
from .relevance import attention_of, choice, inside


class FastV(VLMMethod):
    """Keep the visual tokens with the highest attention at layer k (averaged over heads)
    from the prompt's last token (``query=last``, FastV's choice) or from all the text tokens
    after the image (``query=text``)."""

    name = "fastv"
    stages = frozenset({"inside"})
    question_aware = True

    def __init__(self, query: str = "last"):
        self.query = choice("fastv", "query", query, ("last", "text"))

    def select(self, v: Inside) -> torch.Tensor:
        v = inside(self, v)
        field = "last_attention" if self.query == "last" else "text_attention"
        return top(attention_of(self, v, field), v.count)

    def __repr__(self) -> str:
        return f"FastV(query={self.query!r})"
