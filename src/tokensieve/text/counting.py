"""Counting tokens in the target model's tokenizer: exact counts of whole texts, and a
per-word cost estimate (each word charged the tokens that start in it or in the
whitespace before it) used to plan a selection that the exact count then verifies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import UsageError


class TokenCounter:
    """Wraps a Hugging Face tokenizer or a callable ``str -> int | list``."""

    def __init__(self, tokenizer: Any, name: str = "") -> None:
        self.name = name or type(tokenizer).__name__
        self._hf = tokenizer if hasattr(tokenizer, "encode") and callable(tokenizer) else None
        if self._hf is None and not callable(tokenizer):
            raise UsageError(
                "tokenizer must be a Hugging Face tokenizer, a callable returning a token "
                f"count or list, or a model name; got {type(tokenizer).__name__}."
            )
        self._fn: Callable[[str], Any] = tokenizer

    def count(self, text: str) -> int:
        """Exact number of tokens of ``text`` (no special tokens)."""
        if not text:
            return 0
        if self._hf is not None:
            return len(self._hf(text, add_special_tokens=False)["input_ids"])
        out = self._fn(text)
        if isinstance(out, bool) or not isinstance(out, int | np.integer):
            try:
                out = len(out)
            except TypeError as exc:
                raise UsageError(
                    "a tokenizer callable must return an int count or a sequence of tokens"
                ) from exc
        return int(out)

    def word_costs(self, text: str, words: np.ndarray) -> np.ndarray:
        """Estimated tokens each word adds when kept (including its leading whitespace)."""
        n = len(words)
        if n == 0:
            return np.zeros(0)
        if self._hf is not None and getattr(self._hf, "is_fast", False):
            enc = self._hf(text, add_special_tokens=False, return_offsets_mapping=True)
            starts = np.array([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
            # a token belongs to the first word that ends after the token starts
            owner = np.searchsorted(words[:, 1], starts, side="right")
            owner = np.clip(owner, 0, n - 1)
            costs = np.bincount(owner, minlength=n).astype(np.float64)
            return np.maximum(costs, 1.0)
        prev_end = np.r_[0, words[:-1, 1]]
        pieces = [text[p:e] for p, e in zip(prev_end, words[:, 1], strict=True)]
        # the first word brings its line's indentation along when kept (see assemble)
        pieces[0] = text[text.rfind("\n", 0, int(words[0, 0])) + 1 : words[0, 1]]
        return np.array([max(1, self.count(p)) for p in pieces], dtype=np.float64)
