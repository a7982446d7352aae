"""Adapters that put :func:`tokensieve.compress` inside RAG frameworks.

- :mod:`tokensieve.adapters.langchain`: ``TokensieveCompressor``, a LangChain
  ``BaseDocumentCompressor`` (``pip install tokensieve[langchain]``).
- :mod:`tokensieve.adapters.llamaindex`: ``TokensievePostprocessor``, a LlamaIndex node
  postprocessor (``pip install tokensieve[llamaindex]``).

Both compress the retrieved texts for the query (question-aware compression) to a token budget,
either one budget shared by all the retrieved texts (``budget="shared"``, the default) or the
same budget for each text (``budget="per_document"``). The core of tokensieve never imports
this package, and this module imports neither framework nor any model: the shared logic below
loads :mod:`tokensieve.text` only when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BUDGETS = ("shared", "per_document")
ORIGINAL_KEY = "tokensieve_original_tokens"
COMPRESSED_KEY = "tokensieve_compressed_tokens"
METADATA_KEYS = (ORIGINAL_KEY, COMPRESSED_KEY)

__all__ = ["BUDGETS", "COMPRESSED_KEY", "METADATA_KEYS", "ORIGINAL_KEY", "Compressed",
           "compress_texts"]


@dataclass
class Compressed:
    """One retrieved text after compression. ``original_tokens`` / ``compressed_tokens`` are
    ``None`` for a text that was blank to begin with (passed through untouched); ``dropped``
    is true when all of a non-blank text was cut."""

    text: str
    original_tokens: int | None
    compressed_tokens: int | None

    @property
    def untouched(self) -> bool:
        return self.original_tokens is None

    @property
    def dropped(self) -> bool:
        return not self.untouched and not self.text.strip()


def compress_texts(texts: Sequence[str], query: str | None, *, keep: float | None = None,
                   target_tokens: int | None = None, budget: str = "shared",
                   options: Mapping[str, Any] | None = None) -> list[Compressed]:
    """Compress retrieved ``texts`` for ``query``, one :class:`Compressed` per text, in order.

    ``keep`` (fraction of tokens kept) or ``target_tokens`` as in :func:`tokensieve.compress`
    (neither keeps half). ``budget="shared"``: the texts are compressed together as the
    documents of one prompt (joined by blank lines), so the budget applies to all of them
    together and a text unrelated to the query may be dropped whole; per-text token counts
    are each text counted alone (they may differ from the joint count by a token at a
    boundary). ``budget="per_document"``: each text is compressed alone to the budget.
    ``options``: further keyword arguments of :func:`tokensieve.compress` (method,
    tokenizer, model, protect, keep_numbers, device, ...). Blank texts pass through.
    """
    from ..errors import UsageError

    if budget not in BUDGETS:
        raise UsageError(f"unknown budget {budget!r}; choose one of: {', '.join(BUDGETS)}.")
    opts = dict(options or {})
    for name in ("text", "keep", "target_tokens", "question", "ratio"):
        if name in opts:
            raise UsageError(f"give {name} as the adapter's own setting, not in options.")
    if query is not None and not isinstance(query, str):
        raise UsageError("the query must be a string.")
    question = query.strip() or None if query else None
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UsageError(f"retrieved text {i} is a {type(t).__name__}, not a string.")
    out = [Compressed(t, None, None) for t in texts]
    live = [i for i, t in enumerate(texts) if t.strip()]
    if not live:
        return out
    from ..text import compress

    if budget == "per_document":
        for i in live:
            r = compress(texts[i], keep=keep, target_tokens=target_tokens, question=question,
                         **opts)
            out[i] = Compressed(r.text, r.original_tokens, r.compressed_tokens)
        return out
    if opts.get("format", "text") == "json":
        raise UsageError("format='json' compresses one JSON text; use budget='per_document'.")
    from ..text.pipeline import join_documents, make_counter

    docs = [texts[i] for i in live]
    joined, starts = join_documents(docs)
    r = compress(docs, keep=keep, target_tokens=target_tokens, question=question, **opts)
    counter = make_counter(opts.get("tokenizer"), opts.get("model", "default"))
    for i, start in zip(live, starts, strict=True):
        end = start + len(texts[i])
        kept = "".join(joined[max(s, start):min(e, end)] for s, e in r.kept_spans
                       if s < end and e > start)
        out[i] = Compressed(kept, counter.count(texts[i]), counter.count(kept))
    return out
