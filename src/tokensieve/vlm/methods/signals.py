"""What the vision tower shows, read for one method: a required field, one layer's
attention, the attention a token receives, and dominant + contextual selection."""

from __future__ import annotations

import torch

from ...engine.budget import keep_count
from ...engine.merge import contextual_groups
from ...errors import UsageError
from .base import Visual, top


def require(v: Visual, field: str, method: str, why: str):
    """``v.<field>``, or a :class:`UsageError` naming what ``method`` needs and why."""
    value = getattr(v, field)
    if value is None:
        raise UsageError(f"VLM method {method!r} needs {field!r} ({why}) and this model or call "
                         "does not provide it; choose a method that does not, e.g. 'grid'.")
    return value


def layer_of(maps: list[torch.Tensor], index: int, method: str, setting: str) -> torch.Tensor:
    """``maps[index]`` (negative counts from the last layer), or a one-line error."""
    if not isinstance(index, int) or isinstance(index, bool) or not -len(maps) <= index < len(maps):
        raise UsageError(f"VLM method {method!r}: {setting}={index!r} is not a layer of this "
                         f"vision tower, which shows {len(maps)} layers (0..{len(maps) - 1} "
                         "or -1 for the last).")
    return maps[index]


def received(attention: torch.Tensor) -> torch.Tensor:
    """(N,) the attention each token receives from the other tokens, averaged over them
    (``attention`` (N, N), rows the queries; a token's attention to itself is left out)."""
    a = attention.float()
    n = a.shape[-1]
    return (a.sum(0) - a.diagonal()) / max(1, n - 1)


def attention_score(v: Visual, index: int, method: str, setting: str = "layer") -> torch.Tensor:
    """(N,) importance at tower layer ``index``: the [CLS] query's attention when the tower
    has a [CLS] token, else the attention each token receives from the others."""
    if v.cls_attention is not None:
        return layer_of(v.cls_attention, index, method, setting).float()
    maps = require(v, "attention", method, "the vision tower's attention")
    return received(layer_of(maps, index, method, setting))


def check_fraction(value, name: str, method: str, *, upper: float = 1.0) -> float:
    """``value`` as a float in [0, upper), or a one-line error."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < upper
    if not ok:
        raise UsageError(f"VLM method {method!r}: {name} is a fraction of the budget in "
                         f"[0, {upper:g}), got {value!r}.")
    return float(value)


def dominant_contextual(score: torch.Tensor, metric: torch.Tensor, count: int,
                        contextual: float) -> torch.Tensor:
    """VisionZip's selector: the ``count - c`` dominant tokens (highest ``score``), then
    ``c`` = ``contextual`` of the budget (at least 1 when > 0, leaving one dominant) as
    contextual tokens: evenly spaced targets among the rest, each other remaining token merged
    into its most similar target (cosine of ``metric`` (N, D)). A keep mask when ``c`` is 0,
    else an ``into`` vector."""
    n_ctx = min(count - 1, keep_count(contextual, count))
    dominant = top(score, count - n_ctx)
    if n_ctx <= 0:
        return dominant
    _, targets, group = contextual_groups(metric[None], dominant[None], n_ctx)
    into = torch.arange(score.shape[0], device=dominant.device)
    into[~dominant] = targets[0, group[0]].to(into.device)
    return into
