"""LangChain / LlamaIndex adapters: retrieved documents compressed for the query to a budget.

The adapters are optional extras (tokensieve[langchain], tokensieve[llamaindex]); each test
skips with a reason when its framework is not installed. Most tests count tokens with a
whitespace tokenizer and score with BM25 (no model); the `model` ones run the default
question-aware method with the embedded models."""

import asyncio
import subprocess
import sys

import pytest

from tokensieve import UsageError
from tokensieve.adapters import COMPRESSED_KEY, ORIGINAL_KEY, compress_texts


def ws(text: str) -> list[str]:
    return text.split()


FACT = "The vault access code for the Lisbon office is 7391."
QUERY = "What is the vault access code for the Lisbon office?"
DOCS = [
    ("hr", "The cafeteria opens at eight in the morning and closes after lunch. Staff may bring "
           "guests on Fridays. The menu changes every week and includes a vegetarian dish. "
           "Parking permits are renewed each January at the front desk."),
    ("security", "Visitors must sign in at reception and wear a badge at all times. " + FACT + " "
                 "Fire drills happen twice a year, usually in spring and autumn. Lost badges "
                 "should be reported to the facilities team within a day."),
    ("it", "Laptops are replaced every three years. Printers on the second floor need a badge "
           "to release jobs. The helpdesk answers tickets within four working hours and "
           "keeps a public status page for outages."),
    ("travel", "Train tickets are booked through the travel portal. Hotel stays above three "
               "nights need approval from a manager. Receipts are uploaded within thirty days "
               "of the trip, and mileage is paid monthly."),
]


def total(texts) -> int:
    return sum(len(ws(t)) for t in texts)


# --- the shared logic (no framework needed) ------------------------------------------------

def test_shared_budget_spans_all_texts_and_keeps_the_fact():
    texts = [t for _, t in DOCS]
    out = compress_texts(texts, QUERY, target_tokens=30, budget="shared",
                         options={"method": "bm25", "tokenizer": ws})
    assert len(out) == len(texts)
    assert sum(c.compressed_tokens for c in out) <= 30
    assert FACT in out[1].text
    for c, t in zip(out, texts, strict=True):
        assert c.original_tokens == len(ws(t)) and c.compressed_tokens == len(ws(c.text))


def test_per_document_budget_applies_to_each_text():
    texts = [t for _, t in DOCS]
    out = compress_texts(texts, QUERY, keep=0.4, budget="per_document",
                         options={"method": "bm25", "tokenizer": ws})
    for c, t in zip(out, texts, strict=True):
        assert 0 < c.compressed_tokens <= int(0.4 * len(ws(t)))
    assert "7391" in out[1].text


def test_blank_texts_pass_through_and_bad_settings_are_usage_errors():
    out = compress_texts(["  ", DOCS[0][1]], QUERY, keep=0.5,
                         options={"method": "bm25", "tokenizer": ws})
    assert out[0].text == "  " and out[0].untouched and not out[0].dropped
    assert compress_texts(["", "\n"], QUERY)[1].untouched  # nothing to compress: no model
    with pytest.raises(UsageError, match="budget"):
        compress_texts(["a b"], QUERY, budget="global")
    with pytest.raises(UsageError, match="adapter's own setting"):
        compress_texts(["a b"], QUERY, options={"question": "x"})
    with pytest.raises(UsageError, match="per_document"):
        compress_texts(['{"a": "b c"}'], QUERY, options={"format": "json"})


def test_core_never_imports_the_adapters_and_adapters_import_no_framework():
    code = ("import sys, tokensieve, tokensieve.cli\n"
            "assert 'tokensieve.adapters' not in sys.modules\n"
            "import tokensieve.adapters\n"
            "bad = [m for m in sys.modules if m.startswith(('langchain', 'llama_index'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- LangChain --------------------------------------------------------------------------

@pytest.fixture
def lc():
    pytest.importorskip("langchain_core",
                        reason="langchain-core not installed (pip install tokensieve[langchain])")
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever

    from tokensieve.adapters.langchain import TokensieveCompressor

    class FixedRetriever(BaseRetriever):
        """An in-memory retriever: returns its documents for any query."""

        docs: list[Document]

        def _get_relevant_documents(self, query: str, *,
                                    run_manager: CallbackManagerForRetrieverRun):
            return list(self.docs)

    class CompressingRetriever(BaseRetriever):
        """What LangChain's ContextualCompressionRetriever does (it is not in langchain-core):
        retrieve, then compress for the same query."""

        base_retriever: BaseRetriever
        base_compressor: BaseDocumentCompressor

        def _get_relevant_documents(self, query: str, *,
                                    run_manager: CallbackManagerForRetrieverRun):
            docs = self.base_retriever.invoke(query)
            return list(self.base_compressor.compress_documents(docs, query))

    docs = [Document(page_content=t, metadata={"source": s}, id=f"doc-{i}")
            for i, (s, t) in enumerate(DOCS)]
    return type("LC", (), dict(Document=Document, Compressor=TokensieveCompressor,
                               retriever=FixedRetriever(docs=docs), docs=docs,
                               Compressing=CompressingRetriever))


def test_langchain_retriever_shared_budget_keeps_the_planted_fact(lc):
    compressor = lc.Compressor(target_tokens=30, method="bm25", tokenizer=ws)
    retriever = lc.Compressing(base_retriever=lc.retriever, base_compressor=compressor)
    out = retriever.invoke(QUERY)
    assert any(FACT in d.page_content for d in out)
    assert total(d.page_content for d in out) <= 30
    assert sum(d.metadata[COMPRESSED_KEY] for d in out) <= 30
    by_id = {d.id: d for d in lc.docs}
    for d in out:  # metadata and id kept, counts added, text made of the original's pieces
        src = by_id[d.id]
        assert d.metadata["source"] == src.metadata["source"]
        assert d.metadata[ORIGINAL_KEY] == len(ws(src.page_content))
        assert d.metadata[COMPRESSED_KEY] == len(ws(d.page_content)) > 0
    assert [d.id for d in out] == [d.id for d in lc.docs if d.id in {o.id for o in out}]
    assert all(ORIGINAL_KEY not in d.metadata for d in lc.docs)  # inputs untouched
    assert lc.docs[1].page_content == DOCS[1][1]


def test_langchain_per_document_budget_and_keep_empty(lc):
    compressor = lc.Compressor(keep=0.3, budget="per_document", method="bm25", tokenizer=ws)
    out = compressor.compress_documents(lc.retriever.invoke(QUERY), QUERY)
    assert len(out) == len(lc.docs)
    for d, src in zip(out, lc.docs, strict=True):
        assert d.metadata[COMPRESSED_KEY] <= int(0.3 * len(ws(src.page_content)))
    assert "7391" in out[1].page_content
    # a tight shared budget drops the unrelated documents, unless asked to keep them
    tight = lc.Compressor(target_tokens=12, method="bm25", tokenizer=ws)
    kept = tight.compress_documents(lc.docs, QUERY)
    assert [d.id for d in kept] == ["doc-1"] and "7391" in kept[0].page_content
    every = tight.model_copy(update={"keep_empty": True}).compress_documents(lc.docs, QUERY)
    assert len(every) == 4 and every[0].page_content.strip() == ""
    assert every[0].metadata[COMPRESSED_KEY] == 0


def test_langchain_async_blank_and_bad_budget(lc):
    compressor = lc.Compressor(keep=0.5, method="bm25", tokenizer=ws)
    blank = lc.Document(page_content="   ", metadata={"source": "empty"})
    out = asyncio.run(compressor.acompress_documents([blank, *lc.docs[:2]], QUERY))
    assert out[0] is blank and len(out) >= 2
    assert compressor.compress_documents([], QUERY) == []
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        lc.Compressor(budget="global")


@pytest.mark.model
def test_langchain_default_method_with_the_embedded_models(lc, lm_tokenizer):
    out = lc.Compressor(keep=0.3).compress_documents(lc.docs, QUERY)
    original = sum(len(lm_tokenizer(d.page_content, add_special_tokens=False)["input_ids"])
                   for d in lc.docs)
    assert sum(d.metadata[COMPRESSED_KEY] for d in out) <= int(0.3 * original) + len(lc.docs)
    assert any("7391" in d.page_content for d in out)


# --- LlamaIndex -------------------------------------------------------------------------

@pytest.fixture
def li():
    pytest.importorskip("llama_index.core", reason="llama-index-core not installed "
                        "(pip install tokensieve[llamaindex])")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import MetadataMode, QueryBundle, TextNode

    from tokensieve.adapters.llamaindex import TokensievePostprocessor

    nodes = [TextNode(text=t, metadata={"source": s}, id_=f"node-{i}")
             for i, (s, t) in enumerate(DOCS)]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))  # no download
    return type("LI", (), dict(index=index, Post=TokensievePostprocessor, QueryBundle=QueryBundle,
                               MetadataMode=MetadataMode, nodes=nodes))


def test_llamaindex_index_retrieval_postprocessed_to_a_shared_budget(li):
    retrieved = li.index.as_retriever(similarity_top_k=len(DOCS)).retrieve(QUERY)
    assert len(retrieved) == len(DOCS)
    post = li.Post(target_tokens=30, method="bm25", tokenizer=ws)
    out = post.postprocess_nodes(retrieved, query_bundle=li.QueryBundle(QUERY))
    texts = [n.node.get_content() for n in out]
    assert any(FACT in t for t in texts) and total(texts) <= 30
    by_id = {n.node.node_id: n for n in retrieved}
    for n in out:
        src = by_id[n.node.node_id]
        assert n.score == src.score
        assert n.node.metadata["source"] == src.node.metadata["source"]
        assert n.node.metadata[ORIGINAL_KEY] == len(ws(src.node.get_content()))
        assert n.node.metadata[COMPRESSED_KEY] == len(ws(n.node.get_content()))
        llm_view = n.node.get_content(metadata_mode=li.MetadataMode.LLM)
        assert "source" in llm_view and ORIGINAL_KEY not in llm_view
    assert all(ORIGINAL_KEY not in n.node.metadata for n in retrieved)  # inputs untouched
    assert {n.node.get_content() for n in retrieved} == {t for _, t in DOCS}


def test_llamaindex_per_document_with_query_str(li):
    retrieved = li.index.as_retriever(similarity_top_k=len(DOCS)).retrieve(QUERY)
    post = li.Post(keep=0.3, budget="per_document", method="bm25", tokenizer=ws)
    out = post.postprocess_nodes(retrieved, query_str=QUERY)
    assert len(out) == len(retrieved)
    for n in out:
        assert n.node.metadata[COMPRESSED_KEY] <= int(0.3 * n.node.metadata[ORIGINAL_KEY])
    assert any("7391" in n.node.get_content() for n in out)
    assert post.postprocess_nodes([], query_str=QUERY) == []


def test_llamaindex_query_engine_sends_the_compressed_context(li):
    from llama_index.core.llms import MockLLM

    post = li.Post(target_tokens=30, method="bm25", tokenizer=ws)
    engine = li.index.as_query_engine(llm=MockLLM(), node_postprocessors=[post],
                                      similarity_top_k=len(DOCS))
    response = engine.query(QUERY)
    prompt = str(response)  # MockLLM answers with the prompt it was given
    assert FACT in prompt and ORIGINAL_KEY not in prompt
    assert "cafeteria opens at eight" not in prompt or "mileage is paid" not in prompt
    assert total(n.node.get_content() for n in response.source_nodes) <= 30


@pytest.mark.model
def test_llamaindex_default_method_with_the_embedded_models(li):
    retrieved = li.index.as_retriever(similarity_top_k=len(DOCS)).retrieve(QUERY)
    out = li.Post(keep=0.3).postprocess_nodes(retrieved, query_str=QUERY)
    assert any("7391" in n.node.get_content() for n in out)
    assert all(n.node.metadata[COMPRESSED_KEY] <= n.node.metadata[ORIGINAL_KEY] for n in out)
