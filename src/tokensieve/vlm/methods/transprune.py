"""TransPrune: token transition variation plus instruction-guided attention (Li et al.,
"TransPrune: Token Transition Pruning for Efficient Large Vision-Language Model", 2025)."""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Inside, VLMMethod, top
from .relevance import attention_of, inside, non_negative


def _unit_max(x: torch.Tensor) -> torch.Tensor:
    """``x`` (non-negative) divided by its largest value (all zeros stay zeros)."""
    return x / x.amax().clamp_min(torch.finfo(x.dtype).tiny)


class TransPrune(VLMMethod):
    """Score each visual token by how much layer k changed it (token transition
    variation, TTV) and how much the instruction attends to it (IGA), each scaled to [0, 1]
    by its largest value over the image:

    ``magnitude * |‖h‖ - ‖h_in‖| + direction * (1 - cos(h_in, h)) + attention * IGA``

    where ``h_in`` / ``h`` are the token entering / leaving layer k and IGA is the text
    tokens' attention (``text_attention``). Keep the ``count`` highest."""

    name = "transprune"
    stages = frozenset({"inside"})
    question_aware = True

    def __init__(self, magnitude: float = 0.5, direction: float = 0.5, attention: float = 1.0):
        self.magnitude = non_negative("transprune", "magnitude", magnitude)
        self.direction = non_negative("transprune", "direction", direction)
        self.attention = non_negative("transprune", "attention", attention)
        if self.magnitude + self.direction + self.attention == 0:
            raise UsageError("transprune: magnitude, direction and attention are all 0; "
                             "give at least one a positive weight.")
        self.question_aware = self.attention > 0

    def select(self, v: Inside) -> torch.Tensor:
        v = inside(self, v)
        score = torch.zeros(v.n, device=v.hidden.device)
        if self.magnitude or self.direction:
            if v.hidden_in is None or v.hidden_in.shape != v.hidden.shape:
                raise UsageError("transprune needs the visual tokens entering layer k "
                                 "(hidden_in) shaped like those leaving it (hidden).")
            h_in, h = v.hidden_in.float(), v.hidden.float()
            if self.magnitude:
                score += self.magnitude * _unit_max((h.norm(dim=-1) - h_in.norm(dim=-1)).abs())
            if self.direction:
                turn = 1 - torch.nn.functional.cosine_similarity(h_in, h, dim=-1)
                score += self.direction * _unit_max(turn.clamp_min(0))
        if self.attention:
            iga = attention_of(self, v, "text_attention").float().clamp_min(0)
            score += self.attention * _unit_max(iga).to(score.device)
        return top(score, v.count)

    def __repr__(self) -> str:
        return (f"TransPrune(magnitude={self.magnitude:g}, direction={self.direction:g}, "
                f"attention={self.attention:g})")
