"""``vision.reduce(model, method, keep=...)``: the context manager users call."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .methods import VisionMethod
from .reduce import Reducer


def reduce(model: nn.Module, method: str | VisionMethod = "default", *,
           keep: float | None = None, count: int | None = None,
           at: int | Sequence[int] | None = None, proportional: bool | None = None,
           seed: int = 0) -> Reducer:
    """Reduce the patch tokens of a ViT-family encoder inside a ``with`` block::

        with vision.reduce(model, "default", keep=0.5) as r:
            out = model(pixel_values)
        r.last.source   # which original patch went where, per image

    ``keep``: fraction of patch tokens left (CLS / register / distillation tokens are never
    reduced); or ``count``: patch tokens left. ``at``: block index (or indices, progressive)
    after which to reduce. Methods: see :data:`tokensieve.vision.METHODS`."""
    return Reducer(model, method, keep=keep, count=count, at=at, proportional=proportional,
                   seed=seed)


def apply(model: nn.Module, method: str | VisionMethod = "default", **kwargs) -> Reducer:
    """Like :func:`reduce` but installed until ``remove(reducer)``."""
    return reduce(model, method, **kwargs).apply()


def remove(reducer: Reducer) -> None:
    reducer.remove()
