"""Prompt compression and KV-cache compression in one call, at one memory budget.

``memory`` is the KV memory kept, as a fraction of what the full prompt's uncompressed cache
would hold. ``split`` says how the two stages share it, on a log scale: the prompt keeps
``memory ** split`` of its tokens (:func:`tokensieve.compress`, with the question), then the
KV cache of what remains keeps ``memory ** (1 - split)`` of its entries
(:func:`tokensieve.kv.answer`, question-agnostic: the cache is compressed before the question
is read). ``split=1`` is prompt compression alone, ``split=0`` KV compression alone.

    from tokensieve import stack
    out = stack.answer(model, tok, documents, "Who founded the company?", memory=0.125)
    out.answer, out.memory      # the answer; stored KV bytes / the full prompt's
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .engine.budget import check_keep
from .errors import UsageError

# chosen on the text benchmark's dev split (benchmarks/text_kv_stack.py, seed 1)
DEFAULT_SPLIT = 1.0


@dataclass
class StackedAnswer:
    answer: str
    prompt_keep: float
    kv_keep: float
    prompt_tokens: int        # context tokens before compression
    compressed_tokens: int    # context tokens after the prompt stage
    stored_bytes: int         # KV bytes stored after both stages
    full_bytes: int           # KV bytes of the full prompt, uncompressed

    @property
    def memory(self) -> float:
        return self.stored_bytes / self.full_bytes if self.full_bytes else 1.0


def stage_keeps(memory: float, split: float) -> tuple[float, float]:
    """(prompt keep, KV keep) whose product is ``memory``."""
    memory = check_keep(memory, "memory")
    if isinstance(split, bool) or not isinstance(split, int | float) or math.isnan(split) \
            or not 0 <= split <= 1:
        raise UsageError(f"split must be in [0, 1] (1: prompt compression only, 0: KV "
                         f"compression only), got {split!r}.")
    prompt = memory ** split
    return prompt, min(1.0, memory / prompt)


def prompt_target(tokenizer, full_text: str, question: str, prompt_keep: float,
                  n_full: int | None = None) -> int:
    """Context tokens the prompt stage may keep: ``prompt_keep`` x the full prompt's cached
    tokens (``n_full``, counted here when not given), less the chat template's tokens around
    the context, which stay."""
    from .kv.api import chat_parts

    if n_full is None:
        n_full = len(chat_parts(tokenizer, full_text, question)[0])
    overhead = n_full - len(tokenizer(full_text, add_special_tokens=False)["input_ids"])
    return max(1, math.floor(prompt_keep * n_full) - max(0, overhead))


def answer(model, tokenizer, context: str | Sequence[str], question: str, *,
           memory: float = 0.25, split: float | None = None, policy: str = "default",
           max_new_tokens: int = 32, **compress_options) -> StackedAnswer:
    """Answer ``question`` from ``context`` (a text or a list of documents) within ``memory``
    of the full prompt's KV bytes, compressing the prompt and then its KV cache."""
    from . import kv
    from .kv.api import _full_bytes, chat_parts
    from .text import compress
    from .text.pipeline import join_documents

    split = DEFAULT_SPLIT if split is None else split
    p, k = stage_keeps(memory, split)
    full_text = context if isinstance(context, str) else join_documents(context)[0]
    n_full = len(chat_parts(tokenizer, full_text, question)[0])
    text, n_text = full_text, None
    if p < 1:
        target = prompt_target(tokenizer, full_text, question, p, n_full)
        r = compress(context, target_tokens=target, question=question, tokenizer=tokenizer,
                     progress=False, **compress_options)
        text, n_text = r.text, r.compressed_tokens
    out = kv.answer(model, tokenizer, text, [question], policy=policy, keep=k,
                    max_new_tokens=max_new_tokens)
    return StackedAnswer(out.answers[0], p, k, n_full,
                         n_text if n_text is not None else out.context_tokens,
                         out.stored_bytes, _full_bytes(model, n_full))
