"""What a ``vlm.prune`` block reports: per image of the last prefill, which visual tokens the
language model kept (and merged where), how many tokens each stage saw, and the time the
selection took."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageRecord:
    """One image of one prefill. ``row``: its batch row; ``tokens``: its visual tokens
    before pruning; ``kept``: indices (within the image, ascending) of the tokens the
    language model sees; ``into``: (tokens,) merge map when the method merged (``into[i]``
    the kept token i was averaged into, -1 dropped), else ``None``; ``stages``: visual
    tokens of this image at each stage ("vision": from the vision side, "llm": entering the
    language model); ``seconds``: time spent selecting; ``method``: the method that selected
    (``"default"`` names the one it resolved to on this model)."""

    row: int
    tokens: int
    kept: torch.Tensor
    into: torch.Tensor | None
    stages: dict[str, int]
    seconds: float
    method: str = ""


@dataclass
class Session:
    """What ``vlm.prune`` yields. ``last``: the :class:`ImageRecord` of each image of the
    last pruned prefill (empty when ``keep=1.0``, where the model runs untouched);
    ``lengths``: (L, L'), the prompt's length before and after pruning (padding included);
    ``prefills``: how many prefills the block pruned."""

    method: object
    stage: str
    keep: float | None
    count: int | None
    last: list[ImageRecord] = field(default_factory=list)
    lengths: tuple[int, int] | None = None
    prefills: int = 0

    def record(self, images: list[ImageRecord], length: int, width: int) -> None:
        self.last = images
        self.lengths = (length, width)
        self.prefills += 1
