"""LangChain: compress retrieved documents for the query to a token budget.

``pip install tokensieve[langchain]``::

    from tokensieve.adapters.langchain import TokensieveCompressor

    compressor = TokensieveCompressor(target_tokens=400)           # one budget for all docs
    docs = compressor.compress_documents(retriever.invoke(query), query)

or as the ``base_compressor`` of LangChain's ``ContextualCompressionRetriever``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.documents import Document
    from langchain_core.documents.compressor import BaseDocumentCompressor
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tokensieve.adapters.langchain needs langchain-core: "
                      "pip install 'tokensieve[langchain]'") from exc
from . import COMPRESSED_KEY, ORIGINAL_KEY
from .settings import AdapterSettings

__all__ = ["TokensieveCompressor"]


class TokensieveCompressor(AdapterSettings, BaseDocumentCompressor):
    """A LangChain document compressor backed by :func:`tokensieve.compress`.

    The query drives question-aware compression. ``keep`` is the fraction of tokens kept,
    ``target_tokens`` an exact budget (neither: keep half). ``budget="shared"`` (default):
    one budget for all the documents together, compressed as the documents of one prompt, so
    a document unrelated to the query can be dropped whole; ``budget="per_document"``: each
    document alone gets the budget. ``method`` and ``tokenizer`` (the one the budget is
    counted in; default: the scoring model's) and any other :func:`tokensieve.compress`
    keyword in ``options`` (``protect``, ``keep_numbers``, ``device``, ...).

    Each returned document keeps its metadata and id, plus ``tokensieve_original_tokens``
    and ``tokensieve_compressed_tokens`` (that document counted alone). A document cut down
    to nothing is left out unless ``keep_empty``; a blank document passes through as it is.
    """

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Any = None) -> Sequence[Document]:
        """Compress ``documents`` for ``query``; order and metadata kept."""
        docs = list(documents)
        if not docs:
            return []
        results = self.compress_retrieved([d.page_content for d in docs], query)
        out = []
        for doc, res in zip(docs, results, strict=True):
            if res is None:
                continue
            if res.untouched:
                out.append(doc)
                continue
            metadata = {**doc.metadata, ORIGINAL_KEY: res.original_tokens,
                        COMPRESSED_KEY: res.compressed_tokens}
            out.append(doc.model_copy(update={"page_content": res.text, "metadata": metadata}))
        return out
