"""What a VLM method sees for one image and what it returns.

A method is the scorer + selector of the shared engine for the visual tokens of one image:
it reads a :class:`Visual` (before the language model) or an :class:`Inside` (inside it,
after layer ``k``) and returns, over that image's N visual tokens, either

- a boolean keep mask with exactly ``count`` True entries (pruning), or
- a long ``into`` vector (merging): ``into[i] == i`` for the ``count`` kept tokens,
  ``into[i] == j`` (j a kept token) for a token merged into j, ``-1`` for a dropped token.
  A kept token's new value is the mean of itself and the tokens merged into it, at its own
  position in the sequence (VisionZip's contextual tokens).

The pruner (``tokensieve.vlm.prune``) then rebuilds the sequence without the dropped tokens.
Methods never see other images or padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...engine.select import select_top_k


@dataclass
class Visual:
    """One image's visual tokens before the language model.

    ``features`` (N, D): the tokens the language model receives (after the projector), in
    the order they appear in the sequence. ``count``: how many to keep (1 <= count <= N).
    ``grid`` (h, w) when the tokens are the image's patch grid in raster order (h * w == N),
    else ``None``. ``text`` (T, D): input embeddings of the prompt's text tokens (the
    question), ``None`` when the call is question-agnostic.
    ``vision`` (N, Dv): the vision tower's output features aligned with ``features`` (the
    projector's input), or ``None``. ``attention``: per vision-tower layer, (N, N) attention
    among the visual tokens averaged over heads (rows: queries), or ``None`` when the tower's
    attention is not observed. ``cls_attention``: per layer, (N,) the [CLS] query's attention
    to each visual token averaged over heads, ``None`` for towers without a [CLS] token.
    ``project``: the projector, (M, Dv) -> (M, D), for methods that probe it; ``None`` when
    the model's projector does not map tokens one to one.
    ``probe``: ``probe(idx, depth) -> (len(idx),)``, the attention the prompt's last token
    pays to visual tokens ``idx`` at the decoder layer at ``depth`` (0..1) when only those of
    this image's tokens are in the sequence (:mod:`tokensieve.vlm.probe`); ``None`` when the
    call is question-agnostic. ``model``: a short id of the model's architecture
    (:func:`tokensieve.vlm.look_head.fingerprint`), for methods whose trained parts fit one
    model only; ``None`` when unknown.
    """

    features: torch.Tensor
    count: int
    grid: tuple[int, int] | None = None
    text: torch.Tensor | None = None
    vision: torch.Tensor | None = None
    attention: list[torch.Tensor] | None = None
    cls_attention: list[torch.Tensor] | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    probe: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    model: str | None = None
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    @property
    def n(self) -> int:
        return self.features.shape[0]


@dataclass
class Inside:
    """One image's visual tokens inside the language model, at the output of layer ``layer``.

    ``hidden`` (N, D): the visual tokens' hidden states leaving layer ``layer``;
    ``hidden_in`` (N, D): the same tokens entering that layer (for transition scores).
    ``text_attention`` (N,): attention of the text tokens that follow the image (the
    instruction) to each visual token at layer ``layer``, averaged over heads and over
    those queries; ``last_attention`` (N,): the same for the last token of the prompt only.
    ``text_hidden`` (T, D): hidden states of the text tokens after the image at that layer.
    ``visual_attention`` (N,): attention the visual tokens receive from the other visual
    tokens of the image (averaged over heads and queries).
    """

    hidden: torch.Tensor
    hidden_in: torch.Tensor
    count: int
    layer: int
    num_layers: int
    text_attention: torch.Tensor
    last_attention: torch.Tensor
    text_hidden: torch.Tensor
    visual_attention: torch.Tensor
    grid: tuple[int, int] | None = None
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    @property
    def n(self) -> int:
        return self.hidden.shape[0]


class VLMMethod:
    """Base class. ``stages``: where the method can run ("before", "inside").
    ``needs``: which optional fields of :class:`Visual` it reads ("text", "vision",
    "attention", "cls_attention", "project", "grid", "probe"); the pruner refuses, with a one-line
    error, a model that cannot provide them. ``question_aware``: whether it reads the text."""

    name = "base"
    stages: frozenset[str] = frozenset({"before"})
    needs: frozenset[str] = frozenset()
    question_aware = False

    def used(self) -> str:
        """The name of the method that made the last selection (itself, unless it delegates)."""
        return self.name

    def select(self, v: Visual | Inside) -> torch.Tensor:
        """Boolean (N,) keep mask with exactly ``v.count`` True entries, or a long (N,)
        ``into`` vector with exactly ``v.count`` fixed points (see the module docstring)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` highest scores (quantised; ties keep the earlier)."""
    return select_top_k(scores.float(), count)
