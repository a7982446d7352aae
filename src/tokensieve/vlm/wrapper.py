"""The forward wrapper every stage shares, and what it does on decode calls.

The wrapper is an instance attribute (``functools.wraps`` of the bound forward): hooks on the
model (``tokensieve.kv``'s) still see the original call, and deleting the attribute restores
the class's forward. A stage subclasses :class:`Wrapper` with its ``prefill``; a prefill that
shortened the sequence calls :meth:`Wrapper.remember` on the cache it filled. Decode calls on
such a cache get the attention mask and ``cache_position`` of the shortened cache (``generate``
keeps passing a mask of the original length and positions in the original numbering), while
their position ids stay in the original numbering, so positions, mask and KV cache agree.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ..errors import UsageError
from .adapters import Adapter
from .methods import VLMMethod
from .records import Session
from .sequence import Kept, shrink_mask

MARK = "_tokensieve_vlm"
STATE = "_tokensieve_vlm_kept"   # on a cache a prefill shortened: its Kept (copies carry it)


class Wrapper:
    """Wraps ``model.forward`` for one ``vlm.prune`` block; ``prefill`` is the stage's."""

    def __init__(self, model, adapter: Adapter, method: VLMMethod, target, *,
                 question_aware: bool, seed: int, session: Session):
        self.model, self.adapter, self.method = model, adapter, method
        self.target = target                # n -> how many to keep of n
        self.question_aware, self.seed, self.session = question_aware, seed, session
        self._missing = object()
        self._previous = self._missing

    # --- install / remove ----------------------------------------------------------------
    def install(self) -> None:
        model = self.model
        if getattr(model.__dict__.get("forward"), MARK, False):
            raise UsageError("this model is already inside a vlm.prune() block; blocks cannot "
                             "be nested on one model. Leave the first block first.")
        self._previous = model.__dict__.get("forward", self._missing)
        original = model.forward
        names = list(inspect.signature(original).parameters)

        @functools.wraps(original)
        def forward(*args, **kwargs):
            kw = dict(zip(names, args, strict=False))
            kw.update(kwargs)
            return self.call(original, kw)

        setattr(forward, MARK, True)
        model.forward = forward

    def remove(self) -> None:
        if getattr(self.model.__dict__.get("forward"), MARK, False):
            del self.model.forward
            if self._previous is not self._missing:
                self.model.forward = self._previous

    # --- one call --------------------------------------------------------------------------
    def call(self, original, kw: dict):
        if kw.get("pixel_values_videos") is not None:
            raise UsageError("vlm.prune prunes images, not videos: call the model without "
                             "pixel_values_videos inside the block.")
        cache = kw.get("past_key_values")
        if getattr(cache, "is_compileable", False):
            raise UsageError("vlm.prune shortens the sequence, which a static (compileable) "
                             "cache cannot follow; generate with the default dynamic cache.")
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0 and kw.get("pixel_values") is not None:
            return self.prefill(original, kw, cache)
        if past == 0 and kw.get("image_hidden_states") is not None:
            raise UsageError("vlm.prune needs pixel_values, not precomputed "
                             "image_hidden_states, to select visual tokens.")
        if kw.get("pixel_values") is not None:
            raise UsageError("vlm.prune prunes images in the prefill; a call that adds an "
                             "image to a filled cache is not supported. Start a new cache.")
        kept = getattr(cache, STATE, None)
        if kept is None:
            return original(**kw)
        return self.decode(original, kw, kept, past)

    def prefill(self, original, kw: dict, cache):
        raise NotImplementedError

    @staticmethod
    def remember(cache, kept: Kept) -> None:
        """Mark ``cache`` as holding the shortened sequence ``kept``."""
        if cache is not None:
            setattr(cache, STATE, kept)

    def decode(self, original, kw: dict, kept: Kept, past: int):
        x = kw.get("input_ids") if kw.get("input_ids") is not None else kw.get("inputs_embeds")
        b, q = x.shape[0], x.shape[1]
        if b != kept.idx.shape[0]:
            raise UsageError(f"this cache was pruned for a batch of {kept.idx.shape[0]} rows, "
                             f"not {b}; keep the batch as it was in the prefill.")
        if kw.get("attention_mask") is not None:
            kw["attention_mask"] = shrink_mask(kw["attention_mask"], kept, past, q)
        original_position = kw.get("cache_position")
        if original_position is None:
            original_position = torch.arange(past + kept.dropped, past + kept.dropped + q,
                                             device=x.device)
        if kw.get("position_ids") is None:
            kw["position_ids"] = self.adapter.decode_positions(original_position, kept, past)
        kw["cache_position"] = torch.arange(past, past + q, device=x.device)
        return original(**kw)
