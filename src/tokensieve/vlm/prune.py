"""The before stage: on a prefill that carries an image, embed the prompt, compute each
image's visual tokens with the model's own code, let the method select (or merge) them, and
call the original forward with ``inputs_embeds`` that no longer hold the dropped tokens; the
attention mask, the position ids (the kept tokens' ORIGINAL positions) and ``cache_position``
follow the shortened sequence (decode calls: :mod:`.wrapper`)."""

from __future__ import annotations

import time

import torch

from .. import kv
from ..errors import UsageError
from .layer_attention import language_model
from .look_head import fingerprint
from .methods import Visual
from .probe import Probe
from .records import ImageRecord
from .sequence import as_into, compact, merged_features, take
from .wrapper import Wrapper


class Before(Wrapper):
    """Prunes the visual tokens of ``model`` between the projector and the language model."""

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
        positions = self.adapter.positions(kw, ids, mask)
        records, at = [], 0
        model_id = fingerprint(self.model)   # once per prefill, for every image
        for im, n in zip(images, sizes, strict=True):
            rows, cols = where[at:at + n].unbind(1)
            at += n
            row = int(rows[0])
            if bool((rows != row).any()):
                raise UsageError("an image's tokens span two batch rows; check the prompt.")
            probe = self._probe(embeds, positions, mask, row, cols)
            into, seconds = self._select(im, n, embeds, is_image, mask, row, probe, model_id)
            used = self.method.used()
            fixed = into == torch.arange(n)
            merged = bool(((into >= 0) & ~fixed).any())
            if merged:
                embeds[row, cols[fixed.to(cols.device)]] = merged_features(feats[at - n:at], into)
            keep[row, cols[(~fixed).to(cols.device)]] = False
            records.append(ImageRecord(row, n, fixed.nonzero().flatten(),
                                       into if merged else None,
                                       {"vision": n, "llm": int(fixed.sum())}, seconds, used))
        kept = compact(keep)
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
        self.remember(cache if stored is None else stored, kept)
        self.session.record(records, kept.length, kept.width)
        return out

    def _probe(self, embeds, positions, mask, row: int, cols):
        """The language-model probe of one image (see :mod:`.probe`), for methods that read
        it on a question-aware call; else ``None``."""
        if "probe" not in self.method.needs or not self.question_aware:
            return None
        rows = slice(row, row + 1)
        pos = positions[rows] if positions.dim() == 2 else positions[:, rows]
        return Probe(language_model(self.model), embeds[rows], pos, mask[rows], cols)

    def _select(self, im, n: int, embeds, is_image, mask, row: int, probe=None,
                model_id: str | None = None):
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
                   project=self.adapter.project, probe=probe, model=model_id,
                   generator=torch.Generator().manual_seed(self.seed))
        for need in sorted(self.method.needs):
            if getattr(v, need, None) is None:
                raise UsageError(f"VLM method {self.method.name!r} needs {need!r}, which this "
                                 f"image does not have on {type(self.model).__name__}.")
        t0 = time.perf_counter()
        into = as_into(self.method.select(v), count, n, self.method.name)
        return into, time.perf_counter() - t0
