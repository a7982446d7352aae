"""LlamaIndex: a node postprocessor that compresses retrieved nodes for the query.

``pip install tokensieve[llamaindex]``::

    from tokensieve.adapters.llamaindex import TokensievePostprocessor

    engine = index.as_query_engine(
        node_postprocessors=[TokensievePostprocessor(target_tokens=400)])
"""

from __future__ import annotations

try:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tokensieve.adapters.llamaindex needs llama-index-core: "
                      "pip install 'tokensieve[llamaindex]'") from exc

from . import COMPRESSED_KEY, METADATA_KEYS, ORIGINAL_KEY
from .settings import AdapterSettings

__all__ = ["TokensievePostprocessor"]


def _with_keys(keys: list[str]) -> list[str]:
    return [*keys, *(k for k in METADATA_KEYS if k not in keys)]


class TokensievePostprocessor(AdapterSettings, BaseNodePostprocessor):
    """A LlamaIndex node postprocessor backed by :func:`tokensieve.compress`.

    The query (``query_bundle.query_str``) drives question-aware compression of each node's
    text. ``keep`` is the fraction of tokens kept, ``target_tokens`` an exact budget
    (neither: keep half). ``budget="shared"`` (default): one budget for all the nodes
    together, compressed as the documents of one prompt, so a node unrelated to the query
    can be dropped whole; ``budget="per_document"``: each node alone gets the budget.
    ``method``, ``tokenizer`` (the one the budget is counted in; default: the scoring
    model's) and any other :func:`tokensieve.compress` keyword in ``options``.

    Nodes come back as copies, in order, with their scores, with the compressed text and
    ``tokensieve_original_tokens`` / ``tokensieve_compressed_tokens`` in their metadata
    (excluded from the text the LLM and the embedder see). A node cut down to nothing is
    left out unless ``keep_empty``; a node without text passes through as it is.
    """

    @classmethod
    def class_name(cls) -> str:
        return "TokensievePostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        query = query_bundle.query_str if query_bundle is not None else None
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        out = []
        for item, res in zip(nodes, self.compress_retrieved(texts, query), strict=True):
            if res is None:
                continue
            if res.untouched:
                out.append(item)
                continue
            node = item.node.model_copy()
            node.set_content(res.text)
            node.metadata = {**node.metadata, ORIGINAL_KEY: res.original_tokens,
                             COMPRESSED_KEY: res.compressed_tokens}
            node.excluded_llm_metadata_keys = _with_keys(node.excluded_llm_metadata_keys)
            node.excluded_embed_metadata_keys = _with_keys(node.excluded_embed_metadata_keys)
            out.append(NodeWithScore(node=node, score=item.score))
        return out
