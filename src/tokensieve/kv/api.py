"""The user-facing KV API: ``kv.compress`` (a context manager around any generate / forward
call) and ``kv.answer`` (compress a context once, answer many questions from it)."""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass

import regex
import torch

from ..engine.budget import check_keep
from ..errors import InputError, UsageError
from ..spans import token_spans, value_spans
from .attention import SUPPORTED_ARCHITECTURES, attention_modules
from .cache import CompressedCache, CompressedLayer
from .hooks import CompressionHooks
from .plan import Plan

DEFAULT_CHUNK = 1024   # tokens per chunk of Session.prefill
MIN_CHUNK = 16


def check_model(model) -> None:
    """Refuse architectures whose attention the hooks do not understand, by name."""
    config = getattr(model, "config", None)
    kind = getattr(getattr(config, "get_text_config", lambda **_: config)(decoder=True),
                   "model_type", None) if config is not None else None
    if kind not in SUPPORTED_ARCHITECTURES or not attention_modules(model):
        raise UsageError(
            f"KV compression does not support model type {kind!r}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}. Load one of those with transformers.")
    if getattr(config, "_attn_implementation", "eager") not in ("sdpa", "eager"):
        raise UsageError(
            f"KV compression runs with attn_implementation 'sdpa' or 'eager', not "
            f"{config._attn_implementation!r}; load the model with attn_implementation='sdpa'.")


class Session:
    """What ``kv.compress`` yields: makes caches for its plan and remembers the last one."""

    def __init__(self, model, plan: Plan):
        self.model, self.plan = model, plan
        self.last_cache: CompressedCache | None = None

    def new_cache(self) -> CompressedCache:
        self.last_cache = CompressedCache(self.model.config, self.plan)
        return self.last_cache

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, chunk: int = DEFAULT_CHUNK,
                attention_mask: torch.Tensor | None = None) -> CompressedCache:
        """Read a long context in chunks of about ``chunk`` tokens, compressing after each
        one to the plan's share of everything read so far, so the cache never holds more
        than the budget plus one chunk (the one-shot prefill holds the whole context until
        its forward ends). Returns the cache; pass it to ``generate`` inside the same block
        with the context's ids followed by at least one more (the question's). Chunk ends
        never cut a ``whole`` span or a unit. Rows of a batch must have no padding."""
        ids = _check_chunked(self.model, input_ids, chunk, self.plan, attention_mask)
        cache = self.new_cache()
        cache.chunking, cache.context_tokens = True, ids.shape[1]
        try:
            for a, b in chunk_bounds(ids.shape[1], chunk, self.plan):
                self.model(input_ids=ids[:, a:b], past_key_values=cache, use_cache=True,
                           logits_to_keep=1)
        finally:
            cache.chunking, cache.tail = False, None
        return cache


_ACTIVE = "_tokensieve_kv_active"


def chunk_bounds(n: int, chunk: int, plan: Plan) -> list[tuple[int, int]]:
    """(start, end) of the chunks of a context of ``n`` tokens: about ``chunk`` tokens each,
    an end moved forward past any ``whole`` span or unit it would cut (and, without units, to
    a multiple of the ``information`` policy's fixed unit size)."""
    spans = sorted((*plan.whole, *plan.units))
    step = max(1, getattr(plan.policy, "chunk", 1) if not plan.units else 1)
    size = max(1, chunk // step) * step
    out, start = [], 0
    while start < n:
        end = min(n, start + size)
        moved = True
        while moved and end < n:
            moved = False
            for a, b in spans:
                if a < end < b:
                    end, moved = b, True
        out.append((start, min(end, n)))
        start = min(end, n)
    return out


def _check_chunked(model, input_ids, chunk, plan: Plan, attention_mask=None) -> torch.Tensor:
    """The ids of a chunked prefill, or a one-line error naming what is wrong."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < MIN_CHUNK:
        raise UsageError(f"chunk must be a whole number of tokens >= {MIN_CHUNK}, "
                         f"got {chunk!r}.")
    if plan.policy.deferred:
        raise UsageError(f"the {plan.policy.name!r} policy allocates one pool over the whole "
                         "context at once, so it cannot compress chunk by chunk; use "
                         "'information' (the default) or a per-layer policy such as 'snapkv'.")
    if plan.policy.needs_repeat:
        raise UsageError(f"the {plan.policy.name!r} KV policy repeats the whole context after "
                         "its prefill and cannot score it chunk by chunk; prefill in one "
                         "forward (no chunk=) or choose another policy.")
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise InputError("prefill takes input_ids as a (batch, tokens) LongTensor, e.g. "
                         "tokenizer(text, return_tensors='pt')['input_ids'].")
    if input_ids.shape[1] == 0:
        raise InputError("The context is empty (0 tokens): there is no KV cache to compress.")
    if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
        raise InputError("chunked prefill takes rows without padding (a padded row would "
                         "count its padding as context); prefill rows of different lengths "
                         "one at a time.")
    plan.check_context(torch.full((input_ids.shape[0],), input_ids.shape[1]))
    return input_ids.to(next(model.parameters()).device)
PLAN_OPTIONS = ("sinks", "recent", "window", "protect", "whole", "units", "max_size", "seed")


def _refuse_ratio(ratio) -> None:
    if ratio is not None:
        hint = ""
        if isinstance(ratio, int | float) and not isinstance(ratio, bool) and 0 <= ratio < 1:
            hint = f" (ratio={ratio!r} removed {ratio:g} of the cache: that is keep={1 - ratio:g})"
        raise UsageError(
            "KV compression takes keep= (the fraction of the cache to keep, as everywhere in "
            f"tokensieve), not ratio={ratio!r}{hint}.")


@contextmanager
def compress(model, policy="default", keep: float = 0.5, *, sinks: int = 4, recent: int = 32,
             window: int = 32, protect=None, whole=None, units=None,
             max_size: int | None = None, seed: int = 0, ratio=None):
    """Inside the block, every ``generate`` / forward call with a cache compresses the
    context's KV at prefill, keeping the fraction ``keep`` of it (1.0 = untouched);
    ``max_size`` also caps the cache during generation. ``protect`` spans (token positions)
    are never evicted; ``whole`` spans are kept or evicted as a unit. Leaving the block
    removes every hook.

    The hooks act on the model object: one block per model at a time (a nested or
    concurrent block on the same model raises :class:`UsageError`); use one model object
    per thread to compress in parallel."""
    _refuse_ratio(ratio)
    check_model(model)
    plan = Plan.build(policy, keep, sinks=sinks, recent=recent, window=window,
                      protect=protect, whole=whole, units=units, max_size=max_size, seed=seed)
    if getattr(model, _ACTIVE, False):
        raise UsageError("this model is already inside a kv.compress() block; blocks cannot be "
                         "nested on one model (the hooks act on the model object). Leave the "
                         "first block, or use a second copy of the model.")
    session = Session(model, plan)
    setattr(model, _ACTIVE, True)
    try:
        hooks = CompressionHooks(model, session.new_cache)
    except BaseException:
        setattr(model, _ACTIVE, False)
        raise
    try:
        yield session
    finally:
        hooks.remove()
        setattr(model, _ACTIVE, False)


@dataclass
class Answers:
    """Answers from one compressed context, with what the compression cost and saved."""

    answers: list[str]
    context_tokens: int
    stored_bytes: int
    full_bytes: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def kept_fraction(self) -> float:
        return self.stored_bytes / self.full_bytes if self.full_bytes else 1.0


def chat_parts(tokenizer, context: str, question: str) -> tuple[list[int], list[int]]:
    """Token ids of the context part and the question part of one chat-formatted prompt.

    The context part is everything up to the end of the context (system prompt and user
    header included); the question part is a blank line, the question, and the end of the
    turn with the assistant header -- the split kvpress's pipeline makes, so both tools
    compress exactly the same tokens. Without a chat template: "context\n\nquestion\nAnswer:".
    """
    marker = "\x00QUESTION\x00"
    templated = bool(getattr(tokenizer, "chat_template", None))
    if templated:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context + marker}],
            tokenize=False, add_generation_prompt=True)
    else:
        text = f"{context}{marker}\nAnswer:"
    head, tail = text.split(marker)
    ctx_ids = tokenizer(head, add_special_tokens=not templated)["input_ids"]
    q_ids = tokenizer("\n\n" + question + tail, add_special_tokens=False)["input_ids"]
    return ctx_ids, q_ids


def _context_offsets(tokenizer, context: str, question: str):
    """The decoded context part and its token offsets, or (text, None) when the ids do not
    round-trip exactly (then no token span can be trusted)."""
    ctx_ids, _ = chat_parts(tokenizer, context, question)
    text = tokenizer.decode(ctx_ids)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return text, (enc["offset_mapping"] if enc["input_ids"] == ctx_ids else None)


def number_spans(tokenizer, context: str, question: str = "?") -> list[tuple[int, int]]:
    """Token spans of the context part (as ``chat_parts`` cuts it) that hold one number or
    ID of several tokens (``tokensieve.spans``: 12.5, 2024-01-15, Z9K6-4842, PX-1234), so
    they can be kept whole."""
    text, offsets = _context_offsets(tokenizer, context, question)
    return [] if offsets is None else token_spans(offsets, value_spans(text))


_SENTENCE = regex.compile(r"[^\n]*?(?:[.!?]+[\"')\]]*(?=\s)|\n|$)")


def sentence_spans(tokenizer, context: str, question: str = "?") -> list[tuple[int, int]]:
    """Token spans of the sentences (and lines) of the context part, not overlapping: the
    units of unit-level policies such as ``information``."""
    text, offsets = _context_offsets(tokenizer, context, question)
    if offsets is None:
        return []
    chars = [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if text[m.start():m.end()]
             .strip()]
    out: list[tuple[int, int]] = []
    for a, b in token_spans(offsets, chars, singles=True):
        a = max(a, out[-1][1]) if out else a
        if b > a:
            out.append((a, b))
    return out


def _full_bytes(model, n_tokens: int) -> int:
    """Bytes an uncompressed cache holds after ``n_tokens`` (sliding-window layers hold at
    most their window)."""
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_key_value_heads * head_dim * (torch.finfo(model.dtype).bits // 8)
    types = CompressedCache(model.config).layers
    window = getattr(cfg, "sliding_window", None) or n_tokens + 1
    return sum(per_token * (n_tokens if isinstance(layer, CompressedLayer)
                            and not layer.sliding_window
                            else min(n_tokens, window - 1)) for layer in types)


@torch.no_grad()
def answer(model, tokenizer, context: str, questions: list[str], *, policy="default",
           keep: float = 0.5, max_new_tokens: int = 32, query_aware: bool = False,
           whole_numbers: bool = True, ratio=None, chunk: int | None = None,
           **options) -> Answers:
    """Compress ``context`` once (without seeing the questions) and answer every question
    from a copy of that compressed cache, greedily. ``query_aware=True`` instead compresses
    context + question together for each question (reported separately in benchmarks).
    ``whole_numbers`` keeps multi-token numbers and IDs whole (or drops them whole).
    ``chunk``: read the context in chunks of this many tokens, compressing after each
    (:meth:`Session.prefill`: the cache never holds more than the budget plus one chunk)."""
    _refuse_ratio(ratio)
    keep = check_keep(keep)
    check_model(model)
    unknown = sorted(set(options) - set(PLAN_OPTIONS))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} for kv.answer; the compression "
                         f"options are: {', '.join(PLAN_OPTIONS)}.")
    Plan.build(policy, keep, **dict(options))  # bad options fail before any model call
    if chunk is not None and query_aware:
        raise UsageError("chunk= reads the context before any question; with query_aware=True "
                         "the question is part of what is compressed. Drop one of the two.")
    if not isinstance(context, str) or not context.strip():
        raise InputError("The context is empty: give the text whose KV cache should be compressed.")
    if isinstance(questions, str):
        questions = [questions]
    if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise InputError("Give at least one non-empty question.")
    device = next(model.parameters()).device
    ctx_ids, _ = chat_parts(tokenizer, context, questions[0])
    if whole_numbers and keep < 1:
        given = list(options.get("whole") or ())
        options["whole"] = given + number_spans(tokenizer, context, questions[0])
    if keep < 1 and not options.get("units"):
        options["units"] = sentence_spans(tokenizer, context, questions[0])
    outs, timing = [], {"prefill": 0.0, "decode": 0.0}

    def generate(ids, cache=None) -> None:
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                             max_new_tokens=max_new_tokens, do_sample=False)
        timing["decode"] += time.perf_counter() - t0
        outs.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    if query_aware:  # each question gets its own plan: answers never depend on the order
        for q in questions:
            _, q_ids = chat_parts(tokenizer, context, q)
            own = dict(options)
            own["recent"] = max(options.get("recent", 32), len(q_ids))
            own["window"] = max(options.get("window", 32), len(q_ids))
            with compress(model, policy, keep, **own) as session:
                generate(torch.tensor([ctx_ids + q_ids], device=device))
            stored = session.last_cache.nbytes()
    else:
        with compress(model, policy, keep, **options) as session:
            t0 = time.perf_counter()
            if chunk is not None:
                session.prefill(torch.tensor([ctx_ids], device=device), chunk=chunk)
            else:
                model(input_ids=torch.tensor([ctx_ids], device=device), use_cache=True,
                      logits_to_keep=1)  # only the cache is wanted, not T x vocab logits
            timing["prefill"] += time.perf_counter() - t0
            base = session.last_cache
            stored = base.nbytes()
            for q in questions:
                _, q_ids = chat_parts(tokenizer, context, q)
                generate(torch.tensor([ctx_ids + q_ids], device=device), copy.deepcopy(base))
    prefill_s, decode_s = timing["prefill"], timing["decode"]
    return Answers(outs, len(ctx_ids), stored, _full_bytes(model, len(ctx_ids)),
                   prefill_s, decode_s)
