"""The settings both adapters share (a pydantic mixin), and their one call of
:func:`~tokensieve.adapters.compress_texts`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import Compressed, compress_texts


class AdapterSettings(BaseModel):
    """``keep`` / ``target_tokens`` (the budget), ``budget`` ('shared' or 'per_document'),
    ``method``, ``tokenizer`` (the budget's), ``keep_empty`` and further
    :func:`tokensieve.compress` keywords in ``options``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    keep: float | None = None
    target_tokens: int | None = None
    budget: Literal["shared", "per_document"] = "shared"
    method: str = "default"
    tokenizer: Any = None
    keep_empty: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    def compress_retrieved(self, texts: Sequence[str],
                           query: str | None) -> list[Compressed | None]:
        """One result per text, in order; None for a text cut to nothing (left out unless
        ``keep_empty``)."""
        options = {"method": self.method, "tokenizer": self.tokenizer, **self.options}
        results = compress_texts(texts, query, keep=self.keep, target_tokens=self.target_tokens,
                                 budget=self.budget, options=options)
        return [None if r.dropped and not self.keep_empty else r for r in results]
