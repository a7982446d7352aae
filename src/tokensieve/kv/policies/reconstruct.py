"""Context reconstruction (the KVzip idea): an entry matters as much as the model needs it to
repeat the context. After the prefill, the context's own tokens are fed again, teacher-forced,
right after it; each entry is scored by the most attention any repeating query gives it
(over the query heads that share its KV head). Query-agnostic by construction: no question is
involved, only the context. The repeat pass runs in chunks (each chunk sees the whole
context and its own earlier tokens, as KVzip's chunked scoring does), so it costs about one
more prefill. The pass is run by :func:`tokensieve.kv.reconstruction.finish_repeat`."""

from __future__ import annotations

import torch

from ..attention import LayerInputs
from .base import Policy


class Reconstruct(Policy):
    """Per head, the entries the repeat pass attends to most (``reduce``: the max, as in
    KVzip, or the mean over repeating queries). ``chunk``: repeat tokens per forward.
    ``units=True``: the score averaged over the layer's heads and over each unit (sentences
    from ``kv.answer`` or ``units=``, else chunks of 16 tokens), so every head of a layer
    keeps the same whole units, as ``information`` does. ``local=True``: a repeating query's
    attention is normalised over the first ``sinks`` entries, the span of the context its
    chunk repeats and the chunk itself (KVzip's scoring window) instead of the whole context.
    ``pool="global"``: one budget over every layer and head (KVzip's default): layers get
    shares by how many of the pool's top scores they hold, heads within a layer share theirs
    by score.
    During generation (``max_size``) newer entries are scored TOVA-style by the attention of
    the last ``window`` queries, as no repeat pass is run there."""

    name = "reconstruct"
    needs_repeat = True

    def __init__(self, chunk: int = 512, reduce: str = "max", window: int = 8,
                 units: bool = False, unit_chunk: int = 16, local: bool = False,
                 pool: str = "layer", sinks: int = 4):
        if reduce not in ("max", "mean"):
            raise TypeError(f"reduce must be max or mean, got {reduce!r}")
        if int(chunk) < 16:
            raise TypeError(f"chunk is the repeat pass's tokens per forward, at least 16, "
                            f"got {chunk!r}")
        # not called ``chunk``: that attribute sets the unit size of chunked prefill
        self.repeat_chunk, self.reduce, self.window = int(chunk), reduce, window
        if pool not in ("layer", "global"):
            raise TypeError(f"pool must be layer or global, got {pool!r}")
        if pool == "global" and units:
            raise TypeError("units=true keeps whole units per layer; use it with pool=layer")
        self.units, self.unit_chunk = bool(units), int(unit_chunk)
        self.local, self.pool, self.sinks = bool(local), pool, int(sinks)
        self.head_adaptive = pool == "global"     # heads of a layer share its count by score
        self.floor = 0.0

    def held_window(self, plan_window: int) -> int:
        return 0

    def score(self, x: LayerInputs) -> torch.Tensor:
        """Decode-time eviction only (the prefill is scored by the repeat pass)."""
        return x.window_attention(self.window, reduce="mean")
