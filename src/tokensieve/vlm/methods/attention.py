"""Methods scored by the vision tower's attention: VisionZip, VTC-CLS and VisionDrop."""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Inside, Visual, VLMMethod, top
from .signals import (
    attention_score,
    check_fraction,
    dominant_contextual,
    layer_of,
    received,
    require,
)


class VisionZip(VLMMethod):
    """VisionZip: dominant tokens by the [CLS] attention at tower layer ``layer`` (without a
    [CLS] token, the attention each token receives), then contextual tokens: ``contextual``
    of the budget (the paper's 10 of 64) as evenly spaced targets among the rest, every other
    remaining token merged into the target its vision feature is most similar to. Returns an
    ``into`` vector (a keep mask when the budget leaves no contextual token)."""

    name = "visionzip"
    needs = frozenset({"attention"})  # reads cls_attention too when the tower has a [CLS]

    def __init__(self, contextual: float = 10 / 64, layer: int = -1):
        self.contextual = check_fraction(contextual, "contextual", self.name)
        self.layer = layer

    def select(self, v: Visual) -> torch.Tensor:
        score = attention_score(v, self.layer, self.name)
        metric = v.vision if v.vision is not None else v.features
        return dominant_contextual(score, metric, v.count, self.contextual)


class VTCCLS(VLMMethod):
    """VTC-CLS: keep the tokens the [CLS] query attends to most, its attention averaged over
    the last ``layers`` tower layers (0: all), each layer's scores normalised to sum 1."""

    name = "vtc-cls"
    needs = frozenset({"cls_attention"})

    def __init__(self, layers: int = 4):
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
            raise UsageError(f"VLM method 'vtc-cls': layers is how many of the last tower "
                             f"layers to average (0: all), got {layers!r}.")
        self.layers = layers

    def select(self, v: Visual) -> torch.Tensor:
        maps = require(v, "cls_attention", self.name, "the attention of the tower's [CLS] "
                       "token; towers without one: use 'visionzip' or 'visiondrop'")
        used = maps[-self.layers:] if self.layers else maps
        scores = torch.stack([m.float() / m.float().sum().clamp_min(1e-12) for m in used])
        return top(scores.mean(0), v.count)


class VisionDrop(VLMMethod):
    """VisionDrop: visual-to-visual attention only: keep the tokens that receive the most
    attention from the other visual tokens, at tower layer ``layer`` (before the LLM) or at
    the LLM layer (inside). ``contextual`` > 0 merges the rest into that share of the budget
    as VisionZip does (prune only by default)."""

    name = "visiondrop"
    stages = frozenset({"before", "inside"})
    needs = frozenset({"attention"})

    def __init__(self, layer: int = -1, contextual: float = 0.0):
        self.layer = layer
        self.contextual = check_fraction(contextual, "contextual", self.name)

    def select(self, v: Visual | Inside) -> torch.Tensor:
        if isinstance(v, Inside):
            score, metric = v.visual_attention.float(), v.hidden
        else:
            maps = require(v, "attention", self.name, "the vision tower's attention")
            score = received(layer_of(maps, self.layer, self.name, "layer"))
            metric = v.vision if v.vision is not None else v.features
        return dominant_contextual(score, metric, v.count, self.contextual)
