"""MMTok: cover the question and the image (Dong et al., "MMTok: Multimodal Coverage
Maximization for Efficient Inference of VLMs", 2025)."""

from __future__ import annotations

import torch

from ...engine.diversity import facility_location, normalized
from ...errors import UsageError
from .base import Visual, VLMMethod
from .relevance import choice, non_negative, text_of, visual


class MMTok(VLMMethod):
    """Greedy maximum coverage (a submodular facility-location objective over cosine
    similarities): the kept visual tokens should cover every visual token (mean over them of
    the best similarity to a kept one) and every text token of the question (the same mean,
    weighted by ``text``). Visual-to-visual similarity is taken on ``features`` (the tokens
    the language model receives) or, with ``visual=vision``, on the vision tower's outputs;
    text-to-visual on ``features`` against the question's input embeddings. Without a
    question it covers the visual tokens only."""

    name = "mmtok"
    question_aware = True

    def __init__(self, text: float = 1.0, visual: str = "features"):
        self.text = non_negative("mmtok", "text", text)
        self.visual = choice("mmtok", "visual", visual, ("features", "vision"))
        self.needs = frozenset({"vision"}) if self.visual == "vision" else frozenset()
        self.question_aware = self.text > 0

    def select(self, v: Visual) -> torch.Tensor:
        v = visual(self, v)
        text = text_of(self, v) if self.text > 0 else None
        if self.visual == "vision" and (v.vision is None or v.vision.shape[0] != v.n):
            raise UsageError("mmtok:visual=vision needs the vision tower's features, one row "
                             "per visual token; this model does not provide them: use "
                             "visual=features.")
        space = normalized(v.vision if self.visual == "vision" else v.features)
        rows, weight = [space @ space.T], [torch.full((v.n,), 1.0 / v.n)]
        if text is not None:
            t = text.shape[0]
            rows.append(normalized(text) @ normalized(v.features).T)
            weight.append(torch.full((t,), self.text / t))
        sim = torch.cat(rows)
        return facility_location(sim, v.count, torch.cat(weight).to(sim.device))

    def __repr__(self) -> str:
        return f"MMTok(text={self.text:g}, visual={self.visual!r})"
