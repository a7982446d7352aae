"""Removable module hooks that connect a :class:`CompressedCache` to a model, without
copying model code or patching attention functions. The hooks only route each call to the
phase it belongs to:

- a pre-hook on the model swaps a fresh cache in; a post-hook finishes the selections that
  wait for the whole forward (:mod:`.pool` for global-pool policies, the LM's surprisal here
  then :func:`.prefill.select_by_surprisal`);
- a pre-hook on each attention module gives the layer a mask that matches *its* stored
  entries, only when the model's shared mask would be wrong (:mod:`.masks`);
- a post-hook on each attention module compresses the layer right after its prefill
  (:mod:`.prefill`) and evicts during generation when ``max_size`` is set (:mod:`.decode`).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..errors import InputError, UsageError
from ..scoring.surprisal import chunk_rows as _chunk_rows
from ..scoring.surprisal import token_surprisal
from .attention import attention_modules
from .cache import CompressedCache, CompressedLayer
from .decode import evict_decode, slide
from .masks import layer_mask, shared_mask_fits
from .pool import finish_global
from .prefill import (
    check_sliding_window,
    compress_chunk,
    compress_prefill,
    select_by_surprisal,
    select_chunk_by_surprisal,
)
from .reconstruction import finish_repeat


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
        if not isinstance(cache, CompressedCache) or (cache.prefilled and not cache.chunking):
            return
        policy = cache.plan.policy if cache.plan is not None else None
        if policy is not None and (policy.needs_surprisal or policy.needs_repeat):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise InputError(f"the {policy.name!r} KV policy reads the context's token "
                                 "ids; call the model with input_ids, not inputs_embeds.")
            if policy.needs_surprisal:   # its final hidden states are read too
                self._running = cache
            cache.shared["input_ids"] = ids

    def _norm_post(self, module, args, output):
        if self._running is not None:
            self._running.shared["final_hidden"] = output
            self._running.note_peak()
        return None

    def _model_post(self, module, args, kwargs, output):
        cache = kwargs.get("past_key_values")
        self._running = None
        if isinstance(cache, CompressedCache) and cache.pending:
            if cache.plan.policy.needs_surprisal:
                finish_surprisal(self.model, cache)
            elif cache.plan.policy.needs_repeat:
                finish_repeat(self.model, self.modules, cache)
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
        if shared_mask_fits(kwargs.get("attention_mask"), layer, hidden.shape[1]):
            return None  # the model's shared mask is already right for this layer
        groups = module.config.num_attention_heads // module.config.num_key_value_heads
        kwargs["attention_mask"] = layer_mask(layer, kwargs.get("attention_mask"),
                                              hidden.shape[1], hidden.shape[0], groups)
        return args, kwargs

    def _attn_post(self, module, args, kwargs, output):
        cache = kwargs.get("past_key_values")
        if not isinstance(cache, CompressedCache) or not cache.compressible(module.layer_idx):
            return None
        plan = cache.plan
        layer: CompressedLayer = cache.layers[module.layer_idx]
        if not cache.prefilled or cache.chunking:  # not yet evicted: the most a prefill holds
            cache.note_peak()
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        q = hidden.shape[1]
        prefill = not cache.prefilled and not layer.compressed and layer.stored_length() == q
        if prefill:
            check_sliding_window(layer, q, plan)
        if prefill and q > 1:
            compress_prefill(module, kwargs, cache, layer, hidden, self.num_layers)
            cache.note_peak()   # what this layer left pending is held from now on
        elif cache.chunking and cache.prefilled and plan.keep < 1:
            compress_chunk(module, kwargs, cache, layer, hidden, self.num_layers)
            cache.note_peak()
        elif plan.max_size is not None and layer.stored_length() > plan.max_size:
            evict_decode(module, kwargs, cache, layer, hidden, self.num_layers)
        if layer.sliding_window:
            slide(layer)
        return None


def finish_surprisal(model, cache: CompressedCache) -> None:
    """Score the context by the LM's surprisal, then evict every pending layer by it."""
    hidden, ids = cache.shared.get("final_hidden"), cache.shared.get("input_ids")
    if hidden is None or ids is None or hidden.shape[1] != ids.shape[1]:
        raise UsageError("the 'information' KV policy needs the model's final hidden states "
                         "for the context; this model's decoder has no final 'norm' module "
                         "to read them from. Choose another policy.")
    later_chunk = cache.chunking and cache.prefilled
    valid = None if later_chunk else next(iter(cache.pending.values()))[0].valid  # all layers
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = min(ids.numel() if later_chunk else int(valid.sum()), _chunk_rows(vocab))
    cache.note_peak(rows * vocab * 4)                     # + one float32 chunk of logits
    del cache.shared["final_hidden"], cache.shared["input_ids"]
    if later_chunk:   # one more chunk: its first token is predicted from the last one
        last_hidden, last_id = cache.tail
        surprisal = token_surprisal(model, torch.cat([last_hidden, hidden], 1),
                                    torch.cat([last_id, ids], 1))[:, 1:]
        cache.tail = (hidden[:, -1:].clone(), ids[:, -1:].clone())
        del hidden
        cache.surprisal = torch.cat([cache.surprisal, surprisal], 1)
        select_chunk_by_surprisal(cache)
        return
    surprisal = token_surprisal(model, hidden, ids, valid)
    if cache.chunking:
        cache.tail = (hidden[:, -1:].clone(), ids[:, -1:].clone())
    del hidden
    cache.surprisal = surprisal
    select_by_surprisal(cache, surprisal)
