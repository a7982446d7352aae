"""Removable module hooks that connect a :class:`CompressedCache` to a model, without
copying model code or patching attention functions:

- a pre-hook on each attention module gives the layer a mask that matches *its* stored
  entries (layers may keep different numbers of entries; short batch rows have filler slots),
  only when the model's shared mask would be wrong;
- a post-hook compresses the layer right after its prefill (or, for global-pool policies,
  scores it) and evicts during generation when ``max_size`` is set;
- a pre-hook on the model swaps a fresh cache in, and a post-hook finishes global allocation.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..errors import InputError, UsageError
from ..scoring.surprisal import chunk_rows as _chunk_rows
from ..scoring.surprisal import token_surprisal
from .attention import LayerInputs, attention_modules
from .cache import CompressedCache, CompressedLayer
from .plan import Plan, Slots


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """Boolean 'may attend' view of a bool or additive float mask."""
    return mask if mask.dtype == torch.bool else mask == 0


def layer_mask(layer: CompressedLayer, original: torch.Tensor | None, q: int,
               batch: int, groups: int) -> torch.Tensor:
    """(B, 1|Hq, q, S+q) mask for one compressed layer: real stored slots are visible to every
    new query; among the new tokens, causality and padding come from the model's own mask."""
    stored = layer.stored_length()
    valid = layer.slot_valid()
    device = layer.keys.device if layer.heads is None else layer.heads[0]["k"].device
    if valid is None:
        past = torch.ones(batch, 1, 1, stored, dtype=torch.bool, device=device)
    else:
        past = valid[:, :, None, :]
        if past.shape[1] > 1 and groups > 1:
            past = past.repeat_interleave(groups, dim=1)
    if original is None:
        new = torch.ones(q, q, dtype=torch.bool, device=device).tril()[None, None]
    else:
        new = _allowed(original[..., -q:])
    heads = max(past.shape[1], new.shape[1])
    mask = torch.cat([past.expand(batch, heads, q, stored), new.expand(batch, heads, q, q)], -1)
    if original is not None and original.dtype != torch.bool:
        zero = torch.zeros((), dtype=original.dtype, device=device)
        mask = torch.where(mask, zero, torch.finfo(original.dtype).min)
    return mask


def _shared_mask_fits(mask: torch.Tensor | None, layer: CompressedLayer, q: int) -> bool:
    """Whether the model's shared mask is right for this layer as it is: every stored slot
    is real and the mask is as wide as the layer (stored + q). The mask is judged by its own
    width, never by the reference layer's length, which an earlier layer's eviction in this
    very forward may already have changed."""
    if layer.slot_valid() is not None:
        return False
    stored = layer.stored_length()
    if mask is None:  # sdpa's is_causal: right only when nothing or one query is stored
        return q == 1 or stored == 0
    return mask.shape[-1] == stored + q


class CompressionHooks:
    """Installs and removes the hooks; one instance per ``kv.compress`` block."""

    def __init__(self, model, make_cache):
        self.model, self.make_cache = model, make_cache
        self.modules = attention_modules(model)
        self.num_layers = len(self.modules)
        self._running: CompressedCache | None = None    # the cache of the forward under way
        self.handles = []
        try:  # all or nothing: a failure part-way removes what was installed
            self._install()
        except BaseException:
            self.remove()
            raise

    def _install(self) -> None:
        model = self.model
        self.handles.append(model.register_forward_pre_hook(self._model_pre, with_kwargs=True))
        self.handles.append(model.register_forward_hook(self._model_post, with_kwargs=True))
        for m in self.modules:
            self.handles.append(m.register_forward_pre_hook(self._attn_pre, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._attn_post, with_kwargs=True))
        self.final_norm = getattr(model.get_decoder(), "norm", None)
        if self.final_norm is not None:
            self.handles.append(self.final_norm.register_forward_hook(self._norm_post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # --- model level -----------------------------------------------------------------------
    def _model_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None and ids.shape[1] == 0:
            raise InputError("The context is empty (0 tokens): there is no KV cache to compress.")
        cache = kwargs.get("past_key_values")
        self._running = None
        if isinstance(cache, CompressedCache):
            cache.shared.clear()  # per-forward policy state (ChunkKV's shared ranking)
        if kwargs.get("use_cache") is False or isinstance(cache, CompressedCache):
            self._watch(cache, kwargs, args)
            return None
        if cache is None or (isinstance(cache, Cache) and cache.get_seq_length() == 0):
            kwargs["past_key_values"] = self.make_cache()
            self._watch(kwargs["past_key_values"], kwargs, args)
            return args, kwargs
        return None

    def _watch(self, cache, kwargs, args) -> None:
        """Remember the token ids of a prefill whose policy scores by surprisal."""
        if not isinstance(cache, CompressedCache) or cache.prefilled:
            return
        if cache.plan is not None and cache.plan.policy.needs_surprisal:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise InputError("the 'information' KV policy scores token ids by surprisal; "
                                 "call the model with input_ids, not inputs_embeds.")
            self._running = cache
            cache.shared["input_ids"] = ids

    def _norm_post(self, module, args, output):
        if self._running is not None:
            self._running.shared["final_hidden"] = output
            _note_peak(self._running)
        return None

    def _model_post(self, module, args, kwargs, output):
        cache = kwargs.get("past_key_values")
        self._running = None
        if isinstance(cache, CompressedCache) and cache.pending:
            if cache.plan.policy.needs_surprisal:
                finish_surprisal(self.model, cache)
            else:
                finish_global(cache)
            cache.pending = {}
        if isinstance(cache, CompressedCache):
            cache.prefilled = True
        return None

    # --- attention level -------------------------------------------------------------------
    def _attn_pre(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if not isinstance(cache, CompressedCache) or not cache.compressible(module.layer_idx):
            return None
        layer = cache.layers[module.layer_idx]
        if not layer.compressed:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if _shared_mask_fits(kwargs.get("attention_mask"), layer, hidden.shape[1]):
            return None  # the model's shared mask is already right for this layer
        groups = module.config.num_attention_heads // module.config.num_key_value_heads
        kwargs["attention_mask"] = layer_mask(layer, kwargs.get("attention_mask"),
                                              hidden.shape[1], hidden.shape[0], groups)
        return args, kwargs

    def _attn_post(self, module, args, kwargs, output):
        cache = kwargs.get("past_key_values")
        if not isinstance(cache, CompressedCache) or not cache.compressible(module.layer_idx):
            return None
        plan: Plan = cache.plan
        layer: CompressedLayer = cache.layers[module.layer_idx]
        if not cache.prefilled:  # this layer not yet evicted: the most the prefill holds
            _note_peak(cache)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        q = hidden.shape[1]
        prefill = not cache.prefilled and not layer.compressed and layer.stored_length() == q
        if prefill and layer.window and q >= layer.window and plan.keep < 1:
            raise UsageError(
                f"this model attends within a sliding window of {layer.window} tokens on every "
                f"layer (config.sliding_window, no layer_types) and the context has {q} "
                f"tokens: entries past the window are never seen again, so compressing them "
                f"is meaningless. Compress contexts shorter than {layer.window} tokens, or "
                "set config.sliding_window=None if the model was trained on full attention.")
        if prefill and q > 1:
            self._compress_prefill(module, kwargs, cache, layer, hidden)
            _note_peak(cache)   # what this layer left pending is held from now on
        elif plan.max_size is not None and layer.stored_length() > plan.max_size:
            self._evict_decode(module, kwargs, cache, layer, hidden)
        if layer.window:
            _slide(layer)
        return None

    def _inputs(self, module, kwargs, cache, hidden, keys, values, valid) -> LayerInputs:
        cos, sin = kwargs["position_embeddings"]
        return LayerInputs(module=module, layer_idx=module.layer_idx, num_layers=self.num_layers,
                           hidden=hidden, cos=cos, sin=sin, keys=keys, values=values,
                           valid=valid, window=cache.plan.window, seed=cache.plan.seed,
                           shared=cache.shared)

    def _compress_prefill(self, module, kwargs, cache, layer, hidden):
        plan = cache.plan
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 4:
            valid = torch.ones(hidden.shape[0], hidden.shape[1], dtype=torch.bool,
                               device=hidden.device)
        else:
            valid = _allowed(mask[:, 0, -1, :]).clone()
        n_real = valid.sum(-1)
        if module.layer_idx == cache.compressible_layers()[0]:
            plan.check_context(n_real)
        cache.n_real, cache.row_start = n_real, valid.shape[1] - n_real
        if plan.keep >= 1:
            return  # nothing removed: the cache stays exactly what the model wrote
        x = self._inputs(module, kwargs, cache, hidden, layer.keys, layer.values, valid)
        if plan.policy.needs_surprisal:  # scored once the forward has produced the output
            _release(x, plan.policy.held_window(plan.window))
            cache.pending[module.layer_idx] = (x, None, None)
            return
        scores = plan.policy.score(x)
        if plan.policy.deferred:
            info = plan.policy.informativeness(scores.masked_fill(~valid[:, None], 0))
            _release(x, 0)   # scored: only the validity is needed to select later
            cache.pending[module.layer_idx] = (x, scores, info)
            return
        order = cache.compressible_layers()
        counts = plan.keep_counts(n_real, order.index(module.layer_idx), len(order))
        layer.keep(plan.select(x, counts, scores))

    def _evict_decode(self, module, kwargs, cache, layer, hidden):
        """Cap the layer at ``max_size`` entries per head with the prefill's rules: user
        spans, sinks and the newest tokens are forced, whole spans stay whole, ties go to
        the newer entry."""
        plan = cache.plan
        keys, values, positions = layer.dense_view()
        valid = layer.slot_valid()
        b, h, s = positions.shape
        valid = torch.ones(b, h, s, dtype=torch.bool, device=keys.device) if valid is None \
            else valid.expand(b, h, s)
        x = self._inputs(module, kwargs, cache, hidden, keys, values, valid)
        counts = torch.full((b,), plan.max_size, dtype=torch.long, device=keys.device)
        row_start = cache.row_start if cache.row_start is not None else \
            torch.zeros(b, dtype=torch.long, device=keys.device)
        slots = Slots.stored(valid, positions, row_start.to(keys.device), layer.seen)
        if plan.policy.needs_surprisal:  # the prefill's surprisal; newer tokens: row median
            known = cache.surprisal
            known = known if known is not None else torch.zeros(b, 1, device=keys.device)
            pos = positions[:, 0].clamp_max(known.shape[1] - 1)
            fill = known.median(-1, keepdim=True).values.expand_as(pos)
            x.shared["surprisal"] = torch.where(positions[:, 0] < known.shape[1],
                                                known.gather(-1, pos), fill)
            _share_units(x, plan, slots)   # the prefill's units (or chunks), as at prefill
        layer.keep(plan.select(x, counts, slots=slots, prefer="late"))


def _release(x: LayerInputs, last: int) -> None:
    """Keep only copies of the ``last`` positions of the layer's hidden states and RoPE
    tables (what deferred scoring still reads) and drop everything else the layer's inputs
    point to: a slice would be a view holding the whole (B, T, D) activation alive until
    the end of the forward, for every layer."""
    x.hidden, x.cos, x.sin = (t[:, t.shape[1] - min(last, t.shape[1]):].clone()
                              for t in (x.hidden, x.cos, x.sin))
    x._attn.clear()


def _note_peak(cache: CompressedCache, extra: int = 0) -> None:
    """Record what the cache holds now (KV + scoring state, + ``extra`` transient bytes)."""
    cache.peak_bytes = max(cache.peak_bytes, cache.nbytes() + cache.held_bytes() + extra)


def _share_units(x: LayerInputs, plan: Plan, slots: Slots) -> None:
    """Units for unit-level scoring: the plan's spans, or else each slot's rank among the
    row's real tokens (so fixed chunks never depend on left padding)."""
    x.shared["units"] = plan.unit_ids(slots)
    x.shared["rank"] = torch.where(slots.valid, slots.rank, -1).amax(1)


def _slide(layer: CompressedLayer) -> None:
    """Drop the entries that slid out of a model-wide sliding window: the next query (at
    position ``seen``) sees only positions > seen - window, as transformers' own sliding
    layer does; afterwards every stored entry is visible, so the model's mask stays right."""
    inside = layer.positions > layer.seen - layer.window
    valid = layer.slot_valid()
    if valid is not None:
        inside = inside & valid
        if bool((inside == valid).all()):
            return
    elif bool(inside.all()):
        return
    layer.keep(inside)


def finish_surprisal(model, cache: CompressedCache) -> None:
    """Score every pending layer by the LM's surprisal of the context, then evict."""
    plan = cache.plan
    hidden, ids = cache.shared.get("final_hidden"), cache.shared.get("input_ids")
    if hidden is None or ids is None or hidden.shape[1] != ids.shape[1]:
        raise UsageError("the 'information' KV policy needs the model's final hidden states "
                         "for the context; this model's decoder has no final 'norm' module "
                         "to read them from. Choose another policy.")
    valid = next(iter(cache.pending.values()))[0].valid       # the same on every layer
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = min(int(valid.sum()), _chunk_rows(vocab))
    _note_peak(cache, rows * vocab * 4)                   # + one float32 chunk of logits
    del cache.shared["final_hidden"], cache.shared["input_ids"]
    surprisal = token_surprisal(model, hidden, ids, valid)
    del hidden
    cache.surprisal = surprisal
    order = cache.compressible_layers()
    for i, (x, _, _) in cache.pending.items():
        slots = Slots.prefill(x.valid)
        x.shared["surprisal"] = surprisal.masked_fill(~x.valid, 0)
        _share_units(x, plan, slots)
        counts = plan.keep_counts(cache.n_real, order.index(i), len(order))
        # ties (the tokens of one unit) go to the later token: a cut unit keeps its end
        cache.layers[i].keep(plan.select(x, counts, slots=slots, prefer="late"))


def finish_global(cache: CompressedCache) -> None:
    """Allocate the global pool across the scored layers and evict."""
    plan = cache.plan
    info = {i: entry[2] for i, entry in cache.pending.items()}
    counts = plan.allocate_layers(info, cache.n_real)
    for i, (x, scores, _) in cache.pending.items():
        cache.layers[i].keep(plan.select(x, counts[i], scores))
