"""The inside stage: drop visual tokens from the language model's sequence after layer ``k``.

:func:`install_inside` puts hooks on a VLM (or a plain causal LM, given the image token id):

- a pre-hook on the top model notes, on a prefill (input ids holding image tokens, empty
  cache), where each image is (a contiguous run of image tokens per row); on a decode call
  on a cache it pruned, it shrinks ``attention_mask`` (original length ``L + t``) to the kept
  columns (:func:`.sequence.shrink_mask`, as the before stage does);
- a forward hook on decoder layer ``k`` scores each image (an :class:`Inside`), asks the
  method which tokens to keep, gathers the layer's output rows, and evicts the dropped
  tokens' entries from the KV cache of layers ``0..k`` so every layer stores the same tokens;
- pre-hooks on layers ``k+1..`` hand them the gathered mask, cos/sin and position ids.

Kept tokens keep their original positions; rows that lose different numbers are re-left-padded.
"""

from __future__ import annotations

import inspect
import math
import time
import weakref
from dataclasses import dataclass, field

import torch

from ..engine.budget import check_keep, keep_count
from ..errors import UsageError
from .inside_gather import GATHER, gather_rows, merge_into
from .layer_attention import attention_to
from .layer_attention import language_model as _language_model
from .methods import Inside, VLMMethod, get_method
from .records import ImageRecord
from .sequence import Kept, as_into, compact, shrink_mask

ATTENTION = ("sdpa", "eager")
_INSTALLED: weakref.WeakSet = weakref.WeakSet()   # models with inside-stage hooks on them


@dataclass
class InsideRecord:
    """One image of the last prefill: ``row`` and ``image`` (its index within the row),
    ``start`` (its first position in the row), ``kept`` (indices within the image, sorted),
    ``into`` (the method's merge map, or ``None``), tokens ``before`` / ``after``, and the
    ``seconds`` spent scoring and selecting."""

    row: int
    image: int
    start: int
    kept: torch.Tensor
    into: torch.Tensor | None
    before: int
    after: int
    seconds: float


@dataclass
class _Prefill:
    input_ids: torch.Tensor               # (B, L)
    valid: torch.Tensor                   # (B, L) bool, from the 2-D attention mask
    images: list | None                   # per image in batch order: (tokens, (h, w) or None)
    memo: dict = field(default_factory=dict)   # id(original kwarg) -> gathered one
    idx: torch.Tensor | None = None       # (B, L') kept positions, once layer k has run
    slot_valid: torch.Tensor | None = None


def _check(model, method, keep, count, layer, image_token_id):
    lm = _language_model(model)
    n_layers = len(lm.layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise UsageError(f"layer must be a whole number, got {layer!r}; e.g. layer=2.")
    if not 0 <= layer < n_layers - 1:
        raise UsageError(f"layer={layer} is out of range: this language model has {n_layers} "
                         f"layers, so layer must be in 0..{n_layers - 2} (tokens are dropped "
                         "after it, and at least one layer must follow).")
    if (keep is None) == (count is None):
        raise UsageError("Give exactly one budget: keep (a fraction) or count (tokens per image).")
    if keep is not None:
        check_keep(keep)
    elif isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"count must be a positive whole number of tokens, got {count!r}.")
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int):
        raise UsageError(f"image_token_id must be a token id (int), got {image_token_id!r}.")
    method = get_method(method)
    if "inside" not in method.stages:
        raise UsageError(f"method {method.name!r} cannot run inside the language model "
                         f"(its stages: {', '.join(sorted(method.stages))}); use stage='before'.")
    impl = getattr(lm.config, "_attn_implementation", None)
    if impl not in ATTENTION:
        raise UsageError(f"the inside stage supports attn_implementation 'sdpa' or 'eager', "
                         f"got {impl!r}; load the model with attn_implementation='sdpa'.")
    return lm, method


def _argument(fn, name: str, args: tuple, kwargs: dict):
    """The value of parameter ``name`` of ``fn`` in a call (positional or keyword)."""
    if name in kwargs:
        return kwargs[name]
    params = list(inspect.signature(fn).parameters)
    i = params.index(name) if name in params else len(args)
    return args[i] if i < len(args) else None


def _runs(ids: torch.Tensor, valid: torch.Tensor, token: int) -> list[tuple[int, int]]:
    """Contiguous runs [start, end) of ``token`` among the valid positions of one row."""
    hit = ((ids == token) & valid).tolist()
    out, start = [], None
    for i, h in enumerate(hit + [False]):
        if h and start is None:
            start = i
        elif not h and start is not None:
            out.append((start, i))
            start = None
    return out


def _split(runs: list[tuple[int, int]], images: list) -> list[tuple[int, int]]:
    """Runs cut into images of the known token counts (adjacent images with no token between
    them); without counts, or where they do not fit, a run is one image."""
    out, i = [], 0
    for s, e in runs:
        while i < len(images) and s + images[i][0] < e:
            out.append((s, s + images[i][0]))
            s, i = s + images[i][0], i + 1
        out.append((s, e))
        i += 1
    return out


def _check_selection(sel: torch.Tensor, n: int, count: int, name: str) -> torch.Tensor:
    """The method's answer as an ``into`` vector, checked by the before stage's rule
    (:func:`.sequence.as_into`); a wrong answer here is the method's bug, raised as such."""
    try:
        return as_into(sel, count, n, name)
    except UsageError as exc:
        raise RuntimeError(str(exc)) from None


class InsideHandle:
    """Installed inside-stage hooks: ``records`` (per image of the last prefill) and
    :meth:`remove` (also on leaving a ``with`` block)."""

    def __init__(self, model, lm, method: VLMMethod, keep, count, layer: int,
                 image_token_id: int, question_aware: bool, seed: int) -> None:
        self.model, self.lm, self.method = model, lm, method
        self.keep, self.count, self.layer = keep, count, layer
        self.image_token_id, self.question_aware, self.seed = image_token_id, question_aware, seed
        self.records: list[InsideRecord] = []
        self.session = None     # a vlm.prune Session to report each prefill to
        self._prefill: _Prefill | None = None
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        layers = lm.layers
        self._hooks = [
            model.register_forward_pre_hook(self._top_pre, with_kwargs=True),
            model.register_forward_hook(self._top_post, always_call=True),
            layers[layer].register_forward_hook(self._at_layer, with_kwargs=True),
        ] + [lay.register_forward_pre_hook(self._later, with_kwargs=True)
             for lay in layers[layer + 1:]]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        if self._hooks:
            _INSTALLED.discard(self.model)
        self._hooks = []
        self._prefill = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- the top model -------------------------------------------------------------------
    def _top_pre(self, model, args, kwargs):
        fwd = type(model).forward
        ids = _argument(fwd, "input_ids", (None, *args), kwargs)
        mask = _argument(fwd, "attention_mask", (None, *args), kwargs)
        cache = _argument(fwd, "past_key_values", (None, *args), kwargs)
        self._prefill = None
        filled = cache is not None and cache.get_seq_length() > 0
        images = ids is not None and bool((ids == self.image_token_id).any())
        if images and filled and _argument(fwd, "pixel_values", (None, *args), kwargs) is not None:
            raise UsageError("the inside stage prunes a prefill on an empty cache; this call "
                             "has an image and a filled cache (start a new cache).")
        if images and not filled:  # a prefill (a decode step may generate the image token)
            if cache is not None:
                _check_cache(cache)
            if _argument(fwd, "labels", (None, *args), kwargs) is not None:
                raise UsageError("the inside stage shortens the sequence, so labels cannot be "
                                 "given; compute the loss without pruning.")
            valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            if valid.dim() != 2:
                raise UsageError("the inside stage needs a 2-D attention_mask (or none).")
            self.records = []
            thw = _argument(fwd, "image_grid_thw", (None, *args), kwargs)
            self._prefill = _Prefill(ids, valid, self._images(model, thw))
            return None
        kept = self._kept.get(cache) if cache is not None else None
        if kept is not None and mask is not None and "attention_mask" in kwargs:
            past, q = cache.get_seq_length(), mask.shape[1] - kept.length + kept.width \
                - cache.get_seq_length()
            return args, dict(kwargs, attention_mask=shrink_mask(mask, kept, past, q))
        return None

    def _top_post(self, model, args, output):
        p, self._prefill = self._prefill, None
        if p is not None and p.idx is not None and self.session is not None:
            self.session.record(self.session_records(), p.input_ids.shape[1], p.idx.shape[1])

    def session_records(self) -> list[ImageRecord]:
        """The last prefill's records in ``vlm.prune``'s format."""
        return [ImageRecord(r.row, r.before, r.kept, r.into,
                            {"vision": r.before, "llm": r.before,
                             f"after layer {self.layer}": r.after}, r.seconds,
                            self.method.used())
                for r in self.records]

    @staticmethod
    def _images(model, thw):
        """Per image, its token count and (h, w) token grid when the call says them
        (Qwen2-VL's ``image_grid_thw``), else ``None``."""
        vision = getattr(model.config, "vision_config", None)
        merge = getattr(vision, "spatial_merge_size", None)
        if thw is None or merge is None:
            return None
        return [(t * h * w // merge**2, (h // merge, w // merge) if t == 1 else None)
                for t, h, w in thw.tolist()]

    # -- layer k -------------------------------------------------------------------------
    def _at_layer(self, layer, args, kwargs, output):
        p = self._prefill
        if p is None:
            return None
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden = output[0] if isinstance(output, tuple) else output
        B, L = hidden.shape[:2]
        if p.input_ids.shape != (B, L):
            raise UsageError("the inside stage found a sequence of another length than the "
                             f"input ids ({L} vs {p.input_ids.shape[1]}); not supported.")
        pe = kwargs.get("position_embeddings")
        hidden = hidden.clone()
        keep_pos = []
        n_image = 0
        for b in range(B):
            runs = _runs(p.input_ids[b], p.valid[b], self.image_token_id)
            runs = _split(runs, p.images[n_image:] if p.images else [])
            into_rows = self._select_row(layer, hidden_in, hidden, pe, p, b, runs, n_image)
            n_image += len(runs)
            keep_pos.append(into_rows)
        kept = self._pad_left(keep_pos, L, hidden.device)
        idx, slot_valid = kept.idx, kept.valid
        p.idx, p.slot_valid = idx, slot_valid
        out = gather_rows(hidden, idx, slot_valid)
        cache = kwargs.get("past_key_values")
        if cache is not None:
            self._evict(cache, idx)
            self._kept[cache] = kept
        return (out, *output[1:]) if isinstance(output, tuple) else out

    def _select_row(self, layer, hidden_in, hidden, pe, p, b, runs, n_before):
        """Score and select each image of row ``b``; merge in place into ``hidden``; return
        the row's kept positions (sorted)."""
        L = hidden.shape[1]
        ids, valid = p.input_ids[b], p.valid[b]
        dropped = torch.zeros(L, dtype=torch.bool)
        if not runs:
            return torch.arange(L)
        image_pos = torch.cat([torch.arange(s, e) for s, e in runs]).to(hidden.device)
        text_pos = (valid & (ids != self.image_token_id)).nonzero().flatten().to(hidden.device)
        last = int(valid.nonzero().max())
        queries = torch.cat([image_pos, text_pos])
        t0 = time.perf_counter()
        att = attention_to(layer, hidden_in, pe, b, valid.to(hidden.device), queries,
                           image_pos).cpu()
        shared = (time.perf_counter() - t0) / len(runs)  # the row's scoring, split per image
        text_list = text_pos.tolist()
        row_of = {int(q): i for i, q in enumerate(queries.tolist())}
        col = 0
        for j, (s, e) in enumerate(runs):
            n = e - s
            start_t = time.perf_counter()
            cols = slice(col, col + n)
            col += n
            vis = att[[row_of[i] for i in range(s, e)], cols].clone()
            vis.fill_diagonal_(0)
            visual = vis.sum(0) / max(n - 1, 1)
            after = [t for t in text_list if t >= e]
            if self.question_aware and after:
                text_att = att[[row_of[t] for t in after], cols].mean(0)
                last_att = att[row_of[last], cols]
                text_hidden = hidden[b, after]
            else:  # question-agnostic: the image's own tokens stand in for the text
                text_att = last_att = visual
                text_hidden = hidden.new_zeros(0, hidden.shape[-1])
            grid = self._grid(p, n_before + j, n)
            count = keep_count(self.keep, n) if self.keep is not None else min(self.count, n)
            v = Inside(hidden=hidden[b, s:e], hidden_in=hidden_in[b, s:e], count=count,
                       layer=self.layer, num_layers=len(self.lm.layers),
                       text_attention=text_att, last_attention=last_att,
                       text_hidden=text_hidden, visual_attention=visual, grid=grid,
                       generator=torch.Generator().manual_seed(self.seed + j))
            into = _check_selection(self.method.select(v), n, count, self.method.name)
            merged = into.clone() if bool(((into >= 0) & (into != torch.arange(n))).any()) else None
            if merged is not None:
                merge_into(hidden, b, s, into)
            dropped[s:e] = into != torch.arange(n)
            kept = (into == torch.arange(n)).nonzero().flatten()
            self.records.append(InsideRecord(b, j, s, kept, merged, n, count,
                                             shared + time.perf_counter() - start_t))
        return (~dropped).nonzero().flatten()

    @staticmethod
    def _grid(p, index, n):
        if p.images is not None and index < len(p.images) and p.images[index][1] is not None:
            h, w = p.images[index][1]
            if h * w == n:
                return (h, w)
        r = math.isqrt(n)
        return (r, r) if r * r == n else None

    @staticmethod
    def _pad_left(keep_pos, length, device) -> Kept:
        """The rows' kept positions, re-left-padded (``sequence.compact``)."""
        keep = torch.zeros(len(keep_pos), length, dtype=torch.bool)
        for b, k in enumerate(keep_pos):
            keep[b, k] = True
        kept = compact(keep)
        return Kept(kept.idx.to(device), kept.valid.to(device), length)

    def _evict(self, cache, idx):
        """Keep only the kept tokens' entries in the KV cache of layers ``0..k``."""
        for lay in _check_cache(cache)[: self.layer + 1]:
            at = idx[:, None, :, None].to(lay.keys.device)
            lay.keys = lay.keys.gather(2, at.expand(-1, lay.keys.shape[1], -1, lay.keys.shape[3]))
            lay.values = lay.values.gather(
                2, at.expand(-1, lay.values.shape[1], -1, lay.values.shape[3]))

    # -- layers after k ------------------------------------------------------------------
    def _later(self, layer, args, kwargs):
        p = self._prefill
        if p is None or p.idx is None:
            return None
        new = dict(kwargs)
        for name in ("attention_mask", "position_embeddings", "position_ids", "cache_position"):
            value = kwargs.get(name)
            if value is None and name != "attention_mask":
                continue
            key = (name, id(value))
            if key not in p.memo:
                p.memo[key] = GATHER[name](value, p.idx, p.slot_valid)
            new[name] = p.memo[key]
        return args, new


def _check_cache(cache):
    """The cache's layers, if they are all plain growing ones (what eviction gathers)."""
    layers = getattr(cache, "layers", None)
    if type(cache).__name__ == "CompressedCache":
        raise UsageError("the inside stage does not stack with tokensieve.kv (kv compresses each "
                         "layer during the prefill); inside kv.compress() use stage='before'.")
    if layers is None or any(type(lay).__name__ != "DynamicLayer" for lay in layers):
        raise UsageError("the inside stage needs a DynamicCache with full-attention layers, "
                         f"got {type(cache).__name__}; let generate create the cache.")
    return layers


def install_inside(model, method: str | VLMMethod, *, keep: float | None = None,
                   count: int | None = None, layer: int, image_token_id: int,
                   question_aware: bool = True, seed: int = 0) -> InsideHandle:
    """Hook ``model`` so that every prefill drops, per image, all but ``keep`` (fraction) or
    ``count`` (tokens) of its visual tokens after decoder layer ``layer`` (0-based, at least
    one layer must follow). Returns the handle (``records``, ``remove()``)."""
    lm, method = _check(model, method, keep, count, layer, image_token_id)
    if model in _INSTALLED:
        raise UsageError("this model already has inside-stage pruning installed; remove it "
                         "(leave its with block) before installing another.")
    handle = InsideHandle(model, lm, method, keep, count, layer, image_token_id,
                          bool(question_aware), int(seed))
    _INSTALLED.add(model)
    return handle


__all__ = ["InsideHandle", "InsideRecord", "install_inside"]
