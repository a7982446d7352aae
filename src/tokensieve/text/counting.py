"""Counting tokens in the target model's tokenizer: exact counts of whole texts, and a
per-word cost estimate (each word charged the tokens that start in it or in the
whitespace before it) used to plan a selection that the exact count then verifies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import UsageError
from .assemble import gap_tails, indent_before


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

    def count_many(self, texts: list[str]) -> np.ndarray:
        """Exact token counts of several texts (one batched call for a Hugging Face
        tokenizer)."""
        if self._hf is not None and texts:
            ids = self._hf(list(texts), add_special_tokens=False)["input_ids"]
            return np.array([len(x) if t else 0 for x, t in zip(ids, texts, strict=True)],
                            dtype=np.int64)
        return np.array([self.count(t) for t in texts], dtype=np.int64)

    def word_costs(self, text: str, words: np.ndarray) -> np.ndarray:
        """Estimated tokens each unit adds when kept: its own tokens plus those of the
        whitespace that assemble puts before it when the unit before it was dropped (the
        bounded tail of the gap, see :func:`~.assemble.gap_tail`; for the first unit its
        line's indentation). A long run of whitespace in front of a unit is therefore not
        charged to it; when both its neighbours are kept the exact count catches the rest."""
        n = len(words)
        if n == 0:
            return np.zeros(0)
        lead = np.empty(n, dtype=np.int64)
        lead[0] = indent_before(text, int(words[0, 0]))
        lead[1:] = gap_tails(text, words[:-1, 1], words[1:, 0])
        if self._hf is not None and getattr(self._hf, "is_fast", False):
            enc = self._hf(text, add_special_tokens=False, return_offsets_mapping=True)
            starts = np.array([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
            # a token belongs to the first word that ends after the token starts, when it
            # starts inside that word's charged stretch [lead, end)
            owner = np.searchsorted(words[:, 1], starts, side="right")
            inside = owner < n
            inside[inside] &= starts[inside] >= lead[owner[inside]]
            costs = np.bincount(owner[inside], minlength=n).astype(np.float64)
            return np.maximum(costs, 1.0)
        pieces = [text[p:e] for p, e in zip(lead, words[:, 1], strict=True)]
        return np.maximum(self.count_many(pieces), 1).astype(np.float64)
