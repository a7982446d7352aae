"""The before stage: an instance-level wrapper of a VLM's ``forward``.

On a prefill that carries an image, the wrapper embeds the prompt, computes each image's
visual tokens with the model's own code, lets the method select (or merge) them, and calls
the original forward with ``inputs_embeds`` that no longer hold the dropped tokens; the
attention mask, the position ids (the kept tokens' ORIGINAL positions) and ``cache_position``
follow the shortened sequence. Decode calls on a cache it pruned get the matching mask
(``generate`` keeps passing one of the original length) and ``cache_position``; their
position ids stay in the original numbering, so positions, mask and KV cache agree.

The wrapper is an instance attribute (``functools.wraps`` of the bound forward): hooks on
the model (``tokensieve.kv``'s) still see the original call, and removing the attribute
restores the class's forward.
"""

from __future__ import annotations

import functools
import inspect
import time

import torch

from .. import kv
from ..errors import UsageError
from .adapters import Adapter
from .methods import Visual, VLMMethod
from .records import ImageRecord, Session
from .sequence import Kept, as_into, compact, merged_features, shrink_mask, take

MARK = "_tokensieve_vlm"
STATE = "_tokensieve_vlm_kept"   # on a cache the pruner filled: its Kept (copies carry it)


class Before:
    """Prunes the visual tokens of ``model`` before its language model."""

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
        ids = kw.get("input_ids")
        if ids is None or kw.get("inputs_embeds") is not None:
            raise UsageError("vlm.prune finds the image tokens by id: call the model with "
                             "input_ids, not inputs_embeds.")
        if kw.get("labels") is not None:
            raise UsageError("vlm.prune is for inference: call the model without labels.")
        mask = kw.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        if mask.dim() != 2:
            raise UsageError("vlm.prune needs a 2-D attention mask (batch, tokens).")
        is_image = ids == self.adapter.image_token_id
        if not bool(is_image.any()):
            return original(**kw)   # no image token: nothing to prune
        images = self.adapter.images(kw, ids, self.method.needs)
        embeds = self.model.get_input_embeddings()(ids)
        where = is_image.nonzero()                                  # (M, 2), in sequence order
        sizes = [im.features.shape[0] for im in images]
        if sum(sizes) != where.shape[0]:
            raise UsageError(f"the prompt holds {where.shape[0]} image tokens but the images give "
                             f"{sum(sizes)} visual tokens; build the inputs with the model's "
                             "processor.")
        feats = torch.cat([im.features for im in images]).to(embeds.device, embeds.dtype)
        embeds = embeds.masked_scatter(is_image[..., None].expand_as(embeds), feats)
        keep = mask.bool().clone()
        records, at = [], 0
        for im, n in zip(images, sizes, strict=True):
            rows, cols = where[at:at + n].unbind(1)
            at += n
            row = int(rows[0])
            if bool((rows != row).any()):
                raise UsageError("an image's tokens span two batch rows; check the prompt.")
            into, seconds = self._select(im, n, embeds, is_image, mask, row)
            fixed = into == torch.arange(n)
            merged = bool(((into >= 0) & ~fixed).any())
            if merged:
                embeds[row, cols[fixed.to(cols.device)]] = merged_features(feats[at - n:at], into)
            keep[row, cols[(~fixed).to(cols.device)]] = False
            records.append(ImageRecord(row, n, fixed.nonzero().flatten(),
                                       into if merged else None,
                                       {"vision": n, "llm": int(fixed.sum())}, seconds))
        kept = compact(keep)
        positions = self.adapter.positions(kw, ids, mask)
        text = positions if positions.dim() == 2 else positions[-3:].amax(0)  # (B, L); M-RoPE
        kept.next_position = text.masked_fill(~mask.bool(), -1).amax(1) + 1
        if isinstance(cache, kv.CompressedCache) and "input_ids" in cache.shared:
            cache.shared["input_ids"] = take(ids, kept)   # kv's surprisal scores the kept ids
        kw = {k: v for k, v in kw.items() if k not in self.adapter.image_kwargs}
        kw.update(input_ids=None, inputs_embeds=take(embeds, kept),
                  attention_mask=kept.valid.to(mask.device, mask.dtype),
                  position_ids=take(positions, kept, positions.dim() - 1),
                  cache_position=torch.arange(kept.width, device=ids.device))
        out = original(**kw)
        stored = getattr(out, "past_key_values", None)
        stored = cache if stored is None else stored
        if stored is not None:
            setattr(stored, STATE, kept)
        self.session.record(records, kept.length, kept.width)
        return out

    def _select(self, im, n: int, embeds, is_image, mask, row: int):
        """(into vector, seconds) of one image. Its ``text``: the input embeddings of the
        row's tokens after its last image (the question)."""
        count = self.target(n)
        text = None
        if self.question_aware:
            after = ~is_image[row] & mask[row].bool()
            after[:int(is_image[row].nonzero().max()) + 1] = False
            text = embeds[row, after]
        v = Visual(features=im.features, count=count, grid=im.grid, text=text,
                   vision=im.vision, attention=im.attention, cls_attention=im.cls_attention,
                   project=self.adapter.project,
                   generator=torch.Generator().manual_seed(self.seed))
        for need in sorted(self.method.needs):
            if getattr(v, need, None) is None:
                raise UsageError(f"VLM method {self.method.name!r} needs {need!r}, which this "
                                 f"image does not have on {type(self.model).__name__}.")
        t0 = time.perf_counter()
        into = as_into(self.method.select(v), count, n, self.method.name)
        return into, time.perf_counter() - t0

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
