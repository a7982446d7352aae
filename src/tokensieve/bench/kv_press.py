"""NVIDIA kvpress 0.5.5 presses run on our model, through kvpress's own pipeline.

kvpress compresses the KV cache of the *context only* (query-agnostic): its
``KVPressTextGenerationPipeline`` renders the chat template around ``context + separator``,
splits the text at the separator into the context part (system prompt, user header and the
context) and the question suffix (end of turn and assistant header), prefills the context
under ``with press(model):`` (forward hooks on every attention layer prune the cache right
after the prefill), then for every question runs the question plus the suffix through the
compressed cache and greedy-decodes; after each answer the cache is cut back to the
compressed context, so all questions see the same compressed cache. ``compression_ratio`` is
the fraction of context KV pairs *removed* (0.5 keeps half).

Things to know about kvpress (0.5.5, transformers 5.2.0):

- Positions: the question and the answer get position ids counted from the *uncompressed*
  context length (RoPE gaps are kept where tokens were pruned), while the cache holds fewer
  entries; ``StreamingLLMPress`` is therefore not the paper's re-rotated variant.
- The question is appended to the context with no separator: put one at its start
  (``kvpress_answer`` adds ``question_prefix``, default a blank line).
- ``import kvpress`` wraps every function in transformers' ``ALL_ATTENTION_FUNCTIONS``
  process-wide (for AdaKV's head-wise masking; a no-op unless an attention module carries
  ``masked_key_indices``), and ``press(model)`` attaches ``rotary_emb`` to every attention
  module. ``kvpress_answer`` removes both per-module attributes afterwards.
- AdaKV does not shrink the cache: it keeps every key and overwrites the pruned ones with a
  fake key whose attention weight underflows to zero at each decoding step. ``kv_bytes`` is
  what is stored; ``kv_bytes_effective`` leaves out the masked pairs.

Presses (``KVPRESS_PRESSES``; settings as in kvpress's evaluation registry):

- ``streaming_llm``, ``snapkv``, ``tova``, ``knorm``, ``expected_attention``, ``random``
  (seed 0), ``chunkkv`` (ChunkKV around SnapKV, chunks of 20 as kvpress's registry does) and
  ``adakv`` (AdaKV around ExpectedAttention): run as they are with SDPA attention.
- ``keydiff`` (KeyDiff) and ``kvzip`` (KVzip: the context is replayed after a "Repeat the
  previous context exactly." prompt, in chunks, and scored by the replay's attention; kvpress
  loads the tokenizer from ``model.config.name_or_path``, the local model folder here).
- ``observed_attention``: needs the attention weights, which SDPA does not return (with SDPA it
  fails with ``AssertionError: Set attn_implementation="eager" to use this hook``); it is run
  with the model switched to eager attention for the call, as kvpress's evaluation does.
- ``pyramidkv``: layers keep different numbers of tokens, and transformers builds one
  attention mask from layer 0's cache length. kvpress's pipeline then crashes on the question
  forward, with SDPA ``RuntimeError: The size of tensor a (918) must match the size of tensor b
  (948) at non-singleton dimension 3`` and with eager attention the same kind of broadcast
  error (only flash-attention, which takes no mask, runs it). ``kvpress_answer`` therefore feeds
  the question one token at a time when layer lengths differ (a single-token step needs no mask
  under SDPA); this is exactly equivalent to the causal question forward. Pass
  ``tokenwise_question=False`` to get kvpress's own behaviour (and the crash).
- ``adakv`` fails under eager attention (``AssertionError: eager mode not supported``) and
  ``chunkkv`` too (``AssertionError: ChunkPress does not support attentions.``); both run with
  SDPA, the default here.

Models: SmolLM2 (``LlamaForCausalLM``) is one kvpress supports. Gemma 3 is supported only as
``Gemma3ForConditionalGeneration``, whose sliding-window layers kvpress leaves uncompressed;
on our text-only ``Gemma3ForCausalLM`` (gemma3-270m) it prunes the sliding-window layers too,
whose mask then hides the wrong entries (SnapKV and Knorm at 0.5 answered a 1k-token passkey
item with runs of "." and "The"), so ``kvpress_answer`` refuses presses on models with
sliding-window layers other than that class.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

# name -> (kvpress class, extra arguments, inner scorer press for wrappers)
_PRESS_SPECS: dict[str, tuple[str, dict, str | None]] = {
    "streaming_llm": ("StreamingLLMPress", {}, None),
    "snapkv": ("SnapKVPress", {}, None),
    "tova": ("TOVAPress", {}, None),
    "knorm": ("KnormPress", {}, None),
    "expected_attention": ("ExpectedAttentionPress", {}, None),
    "observed_attention": ("ObservedAttentionPress", {}, None),
    "pyramidkv": ("PyramidKVPress", {}, None),
    "random": ("RandomPress", {"seed": 0}, None),
    "chunkkv": ("ChunkKVPress", {"chunk_length": 20}, "SnapKVPress"),
    "adakv": ("AdaKVPress", {}, "ExpectedAttentionPress"),
    # issue 22's anchors: KeyDiff (key similarity) and KVzip (context reconstruction; it
    # loads the tokenizer from model.config.name_or_path, a local folder here)
    "keydiff": ("KeyDiffPress", {}, None),
    "kvzip": ("KVzipPress", {}, None),
}


def _factory(cls: str, extra: dict, inner: str | None) -> Callable[[float], Any]:
    def build(r: float):
        import kvpress

        if inner is None:
            return getattr(kvpress, cls)(compression_ratio=r, **extra)
        return getattr(kvpress, cls)(press=getattr(kvpress, inner)(compression_ratio=r), **extra)

    return build


KVPRESS_PRESSES: dict[str, Callable[[float], Any]] = {
    name: _factory(*spec) for name, spec in _PRESS_SPECS.items()}
NO_PRESS = ("no_press", "none")  # names for the uncompressed baseline through the same pipeline
NEEDS_EAGER = frozenset({"observed_attention"})


def make_press(name: str, ratio: float):
    """A kvpress press removing the fraction ``ratio`` of the context KV pairs (None: none)."""
    if name in NO_PRESS or ratio == 0:
        return None
    if name not in KVPRESS_PRESSES:
        raise ValueError(f"unknown kvpress press {name!r}; choose from "
                         f"{', '.join([*KVPRESS_PRESSES, NO_PRESS[0]])}")
    if not 0 <= ratio < 1:
        raise ValueError(f"compression ratio must be in [0, 1), got {ratio}")
    return KVPRESS_PRESSES[name](ratio)


def _pipeline_class():
    from kvpress import KVPressTextGenerationPipeline

    class TimedKVPressPipeline(KVPressTextGenerationPipeline):
        """kvpress's pipeline, unchanged except that it times the prefill and each answer
        and, when ``tokenwise`` and the layers hold different numbers of tokens (PyramidKV),
        feeds the question one token at a time before kvpress's own greedy decoding."""

        tokenwise = True
        stats: dict[str, Any]

        def _forward(self, input_tensors, **kwargs):
            self.stats = {"start": time.perf_counter(), "prefill_end": None, "decode_s": 0.0,
                          "context_tokens": int(input_tensors["context_ids"].shape[1]),
                          "tokenwise": False}
            return super()._forward(input_tensors, **kwargs)

        def generate_answer(self, question_ids, cache, context_length, max_new_tokens):
            start = time.perf_counter()
            if self.stats["prefill_end"] is None:
                self.stats["prefill_end"] = start
            lengths = {cache.get_seq_length(i) for i in range(len(cache))}
            n_q = question_ids.shape[1]
            if self.tokenwise and len(lengths) > 1 and n_q > 1:
                import torch

                self.stats["tokenwise"] = True
                for j in range(n_q - 1):
                    self.model.model(input_ids=question_ids[:, j : j + 1], past_key_values=cache,
                                     position_ids=torch.tensor([[context_length + j]],
                                                               device=question_ids.device))
                answer = super().generate_answer(question_ids[:, -1:], cache,
                                                 context_length + n_q - 1, max_new_tokens)
            else:
                answer = super().generate_answer(question_ids, cache, context_length,
                                                 max_new_tokens)
            self.stats["decode_s"] += time.perf_counter() - start
            return answer

    return TimedKVPressPipeline


_PIPELINE_CLASS = None


def kvpress_pipeline(model, tokenizer, *, tokenwise_question: bool = True):
    """kvpress's text-generation pipeline on an already loaded model (nothing is downloaded;
    the model stays on its device)."""
    global _PIPELINE_CLASS
    if _PIPELINE_CLASS is None:
        _PIPELINE_CLASS = _pipeline_class()
    pipe = _PIPELINE_CLASS(model=model, tokenizer=tokenizer, device=model.device)
    pipe.tokenwise = tokenwise_question
    return pipe


@contextlib.contextmanager
def attn_implementation(model, name: str | None) -> Iterator[None]:
    """Temporarily switch the model's attention implementation (e.g. to 'eager')."""
    old = model.config._attn_implementation
    if name is None or name == old:
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def _attention_modules(model) -> list:
    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return [layer.self_attn for layer in inner.layers]


def _cache_stats(cache, modules, context_tokens: int) -> dict[str, Any]:
    lengths, stored, full, masked_bytes = [], 0, 0, 0
    for i in range(len(cache)):
        layer = cache.layers[i]
        keys, values = layer.keys, layer.values
        lengths.append(int(keys.shape[2]))
        layer_bytes = keys.numel() * keys.element_size() + values.numel() * values.element_size()
        stored += layer_bytes
        per_token = layer_bytes // max(1, keys.shape[2])
        full += per_token * context_tokens
        masked = getattr(modules[i], "masked_key_indices", None) if i < len(modules) else None
        if masked is not None:  # AdaKV: pairs kept in memory but hidden from attention
            pair = (keys.shape[-1] * keys.element_size() + values.shape[-1] * values.element_size())
            masked_bytes += int(masked[0].numel()) * pair
    return {"kv_tokens": lengths, "kv_bytes": stored, "kv_bytes_effective": stored - masked_bytes,
            "kv_bytes_full": full}


def _check_model(model) -> None:
    layer_types = getattr(model.config, "layer_types", None) or []
    if "sliding_attention" in layer_types and type(model).__name__ != (
            "Gemma3ForConditionalGeneration"):
        raise ValueError(f"kvpress would also prune the sliding-window layers of "
                         f"{type(model).__name__}, which breaks their attention mask; it only "
                         "skips them for Gemma3ForConditionalGeneration")


def _cleanup(modules, had_rotary: list[bool]) -> None:
    for module, had in zip(modules, had_rotary, strict=True):
        if getattr(module, "masked_key_indices", None) is not None:
            module.masked_key_indices = None
        if not had and "rotary_emb" in module._modules:
            del module.rotary_emb


def kvpress_answer(model, tokenizer, press_name: str, ratio: float, context: str,
                   questions: list[str], max_new_tokens: int, *, question_prefix: str = "\n\n",
                   answer_prefix: str = "", tokenwise_question: bool = True) -> dict[str, Any]:
    """Compress the chat-templated context once with a kvpress press, then greedy-decode an
    answer to every question from the compressed cache (kvpress's pipeline).

    ``question_prefix`` goes between the context and each question (kvpress concatenates them
    as they are). Returns ``answers`` (one per question), ``context_tokens`` (the templated
    context), ``kv_tokens`` (per layer, after compression), ``kv_bytes`` (key and value tensors
    stored after compression), ``kv_bytes_effective`` (less AdaKV's masked pairs),
    ``kv_bytes_full`` (the same cache uncompressed), ``prefill_s`` (templating excluded),
    ``decode_s`` (question forwards and decoding, all questions), ``tokens_generated`` (all
    questions), ``attn_implementation`` and ``tokenwise_question`` (whether the question was
    fed token by token, see the module docstring).
    """
    import torch
    from transformers import DynamicCache

    press = make_press(press_name, ratio)
    if press is not None:
        _check_model(model)
    pipe = kvpress_pipeline(model, tokenizer, tokenwise_question=tokenwise_question)
    modules = _attention_modules(model)
    had_rotary = ["rotary_emb" in m._modules for m in modules]
    counter = {"n": 0}

    def count_tokens(*_):
        counter["n"] += 1  # kvpress's generate_answer: one top-level forward per new token

    attn = "eager" if press_name in NEEDS_EAGER else None
    cache = DynamicCache()
    hook = model.register_forward_hook(count_tokens)
    try:
        with attn_implementation(model, attn), torch.inference_mode():
            used_attn = model.config._attn_implementation
            out = pipe(context, questions=[question_prefix + q for q in questions], press=press,
                       max_new_tokens=max_new_tokens, answer_prefix=answer_prefix, cache=cache)
            end = time.perf_counter()
        stats = pipe.stats
        result = {
            "press": press_name, "ratio": ratio, "answers": out["answers"],
            "context_tokens": stats["context_tokens"],
            **_cache_stats(cache, modules, stats["context_tokens"]),
            "prefill_s": (stats["prefill_end"] or end) - stats["start"],
            "decode_s": stats["decode_s"], "tokens_generated": counter["n"],
            "attn_implementation": used_attn, "tokenwise_question": stats["tokenwise"],
        }
    finally:
        hook.remove()
        _cleanup(modules, had_rotary)
    return result
