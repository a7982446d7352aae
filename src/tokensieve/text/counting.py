"""Counting tokens in the target model's tokenizer: exact counts of whole texts, and a
per-word cost estimate (each word charged the tokens that start in it or in the least
whitespace that can stand before it) used to plan a selection that the exact count then verifies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import UsageError
from .assemble import gap_tails, indent_before, squeezed


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

    def word_costs(self, text: str, words: np.ndarray, keep_indent: bool = False) -> np.ndarray:
        """Estimated tokens each unit adds when kept: its own tokens plus those of the least
        whitespace that can separate it from the unit before (see
        :func:`~.assemble.squeezed`; the whitespace beyond that is squeezed out before any
        unit goes, so a long run of blank lines or indentation is not charged to a word).
        The exact count of the output verifies the plan."""
        n = len(words)
        if n == 0:
            return np.zeros(0)
        lead = np.empty(n, dtype=np.int64)
        lead[0] = indent_before(text, int(words[0, 0]))
        lead[1:] = gap_tails(text, words[:-1, 1], words[1:, 0])
        # only a gap with a line break (or the first unit's indentation) is longer than
        # what is left of it once squeezed; elsewhere the tail is one character
        longer = np.flatnonzero(words[:, 0] - lead > 1).tolist()
        if n and words[0, 0] > lead[0] and (not longer or longer[0] != 0):
            longer.insert(0, 0)
        least = {i: "".join(text[a:b] for a, b in squeezed(text, int(lead[i]),
                                                             int(words[i, 0]), i == 0,
                                                             keep_indent))
                 for i in longer}
        if self._hf is not None and getattr(self._hf, "is_fast", False):
            enc = self._hf(text, add_special_tokens=False, return_offsets_mapping=True)
            starts = np.array([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
            # a token belongs to the first word that ends after the token starts: to the
            # word itself when it starts inside it, else to its gap when it starts in the
            # stretch [lead, start) a dropped neighbour would leave
            owner = np.searchsorted(words[:, 1], starts, side="right")
            ok = owner < n
            owner, starts = owner[ok], starts[ok]
            in_word = starts >= words[owner, 0]
            in_gap = ~in_word & (starts >= lead[owner])
            own = np.bincount(owner[in_word], minlength=n)
            gap = np.bincount(owner[in_gap], minlength=n)
            # the gap is charged what is left of it once squeezed, when that is less
            short = [i for i in longer if gap[i] and len(least[i]) < words[i, 0] - lead[i]]
            pieces = sorted({least[i] for i in short})
            cost_of = dict(zip(pieces, self.count_many(pieces).tolist(), strict=True))
            for i in short:
                gap[i] = min(gap[i], cost_of[least[i]])
            return np.maximum(own + gap, 1).astype(np.float64)
        pieces = [(least[i] if i in least else text[lead[i]:words[i, 0]])
                  + text[words[i, 0]:words[i, 1]] for i in range(n)]
        return np.maximum(self.count_many(pieces), 1).astype(np.float64)
