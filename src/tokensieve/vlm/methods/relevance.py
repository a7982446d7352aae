"""What the question-aware methods share: checked access to a method's input, the text's
relevance to each visual token, and the share of a budget a second criterion gets."""

from __future__ import annotations

import math

import torch

from ...engine.diversity import normalized
from ...errors import UsageError
from .base import Inside, Visual, VLMMethod, top


def visual(method: VLMMethod, v) -> Visual:
    """``v`` as a :class:`Visual` with a count in [1, N], else a one-line error."""
    if not isinstance(v, Visual):
        raise UsageError(f"VLM method {method.name!r} runs before the language model "
                         f"(stage='before'), not inside it; pick another method for "
                         f"stage='inside'.")
    return counted(method, v)


def inside(method: VLMMethod, v) -> Inside:
    """``v`` as an :class:`Inside` with a count in [1, N], else a one-line error."""
    if not isinstance(v, Inside):
        raise UsageError(f"VLM method {method.name!r} runs inside the language model: use "
                         f"stage='inside' (with layer=k).")
    return counted(method, v)


def counted(method: VLMMethod, v):
    """``v`` (either stage) when its count is in [1, N], else a one-line error."""
    if not 1 <= v.count <= v.n:
        raise UsageError(f"VLM method {method.name!r} was asked to keep {v.count} of {v.n} "
                         f"visual tokens; the count must be between 1 and {v.n}.")
    return v


def text_of(method: VLMMethod, v: Visual) -> torch.Tensor | None:
    """The question's embeddings (T, D), or ``None`` when the call is question-agnostic
    (no text, or no text tokens)."""
    t = v.text
    if t is None or t.numel() == 0:
        return None
    if t.dim() != 2 or t.shape[-1] != v.features.shape[-1]:
        raise UsageError(f"VLM method {method.name!r}: the text embeddings have shape "
                         f"{tuple(t.shape)} but the visual tokens {tuple(v.features.shape)}; "
                         f"pass text as (T, {v.features.shape[-1]}) input embeddings.")
    return t


def text_relevance(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N,): each visual token's highest cosine similarity to any text token."""
    return (normalized(features) @ normalized(text).T).amax(-1)


def add_relevant(keep: torch.Tensor, features: torch.Tensor, text: torch.Tensor,
                 n: int) -> torch.Tensor:
    """``keep`` plus the ``n`` tokens not yet kept that are most relevant to the text."""
    if not n:
        return keep
    score = text_relevance(features, text).masked_fill(keep, float("-inf"))
    return keep | top(score, n)


def share_of(count: int, share: float) -> int:
    """How many of ``count`` slots a criterion with ``share`` of the budget gets: at least
    one when ``share > 0`` (rounded up), never more than ``count``."""
    return min(count, max(0, math.ceil(share * count - 1e-9)))


def fraction(method: str, key: str, value) -> float:
    """A setting in [0, 1], else a one-line error."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not 0.0 <= out <= 1.0:
        raise UsageError(f"{method}: {key} is a fraction between 0 and 1, got {value!r}.")
    return out


def non_negative(method: str, key: str, value) -> float:
    """A finite setting >= 0, else a one-line error."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (math.isfinite(out) and out >= 0):
        raise UsageError(f"{method}: {key} is a number >= 0, got {value!r}.")
    return out


def whole(method: str, key: str, value, low: int = 1) -> int:
    """A whole-number setting >= ``low``, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{method}: {key} is a whole number >= {low}, got {value!r}.")
    return value


def choice(method: str, key: str, value, options: tuple[str, ...]) -> str:
    """One of ``options``, else a one-line error listing them."""
    if value not in options:
        raise UsageError(f"{method}: {key} is one of {', '.join(options)}; got {value!r}.")
    return value


def attention_of(method: VLMMethod, v: Inside, field: str) -> torch.Tensor:
    """``v.<field>`` (an (N,) attention vector), else a one-line error."""
    a = getattr(v, field, None)
    if a is None or a.shape != (v.n,):
        got = "nothing" if a is None else f"shape {tuple(a.shape)}"
        raise UsageError(f"VLM method {method.name!r} needs {field} as one value per visual "
                         f"token ({v.n}), got {got}.")
    return a


def spread(keep: torch.Tensor, count: int) -> torch.Tensor:
    """``keep`` plus evenly spaced tokens among those not kept, up to ``count`` in all
    (coverage for the part of a budget a score does not fill)."""
    rest = count - int(keep.sum())
    if rest > 0:
        free = (~keep).nonzero().flatten()
        keep = keep.clone()
        keep[free[torch.linspace(0, len(free) - 1, rest).round().long()]] = True
    return keep
