"""Real prose that ships in package files today (nothing from a hub), for the benchmarks.

- Wikipedia articles: the shortened English Wikipedia dump (wikitext, 206 pages, 1.7 MB
  bz2) in gensim's test data, turned into plain paragraphs by :func:`wikitext_paragraphs`.
- News articles: the Lee corpus (299 ABC news articles, one per line) in gensim's test data.

Both are read from gensim's source archive (fetched from pip's configured index with its
sha256 pinned, never installed); gensim 4.3.3 first, then 4.3.2 (the same files) when the
first cannot be had. Parsed text is cached in ``data_dir()/corpora``.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import json
import os
import re
import tarfile
import tempfile

from ..errors import TokensieveError
from .store import data_dir, package_file

# (name, version, sha256 of the .tar.gz as the index lists it), tried in order
GENSIM_SDISTS = (
    ("gensim", "4.3.3", "84852076a6a3d88d7dac5be245e24c21c3b819b565e14c1b61fa3e5ee76dcf57"),
    ("gensim", "4.3.2", "99ac6af6ffd40682e70155ed9f92ecbf4384d59fb50af120d343ea5ee1b308ab"),
)
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302" \
    "-shortened.bz2"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"
# the same two files are in both archives: their own sha256, so the data stay the same data
MEMBER_SHA256 = {
    WIKI_MEMBER: "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
    LEE_MEMBER: "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
}
MAX_MEMBER_BYTES = 64 << 20  # a test-data file larger than this is not ours
INSTALL_HINT = ("the gensim 4.3.3 (or 4.3.2) source archive from the package index; put "
                "gensim-4.3.3.tar.gz in {folder} by hand if pip's index cannot be reached")


def _gensim_member(member: str) -> bytes:
    """One file of gensim's test data, from the first pinned source archive that can be had."""
    folder = data_dir() / "downloads"
    errors = []
    for name, version, sha in GENSIM_SDISTS:
        try:
            archive = package_file(name, version, kind="sdist", sha256=sha, folder=folder)
        except TokensieveError as exc:
            errors.append(str(exc).split(";")[0])
            continue
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith("/" + member):
                    if m.size > MAX_MEMBER_BYTES:
                        raise TokensieveError(f"{archive.name}: {member} is {m.size} bytes")
                    blob = tar.extractfile(m).read()
                    if hashlib.sha256(blob).hexdigest() != MEMBER_SHA256.get(member):
                        raise TokensieveError(f"{archive.name}: {member} is not the pinned "
                                              "file (sha256 differs)")
                    return blob
        errors.append(f"{archive.name} has no {member}")
    raise TokensieveError("real-text corpus unavailable: needs " +
                          INSTALL_HINT.format(folder=folder) + " (" + "; ".join(errors) + ")")


def _cached_json(name: str, build):
    path = data_dir() / "corpora" / name
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:  # a unique temporary name: parallel test workers never write into one file
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, ensure_ascii=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return value


# --------------------------------------------------------------------------- wikitext

_PAGE = re.compile(r"<page>.*?<title>(.*?)</title>.*?<text[^>]*>(.*?)</text>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]{0,200}>")
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?: ([^\]]*))?\]")
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+")
_QUOTES = re.compile(r"'{2,5}")
_SPACES = re.compile(r"[ \t]+")
_SKIP_LINE = ("*", "#", ":", ";", "|", "!", "{", "}", "=", "[[Category:", "__")
_MEDIA = ("file:", "image:", "media:", "category:")


def _strip_nested(text: str, open_: str, close: str, keep=None) -> str:
    """``text`` with every balanced ``open_ ... close`` span replaced by ``keep(inner)`` (or
    removed); one left-to-right pass with a depth counter (linear time, any nesting)."""
    out, stack, i, n = [], [], 0, len(text)
    lo, lc = len(open_), len(close)
    while i < n:
        if text.startswith(open_, i):
            stack.append(len(out))
            out.append(open_)
            i += lo
        elif stack and text.startswith(close, i):
            start = stack.pop()
            inner = "".join(out[start + 1:])
            del out[start:]
            out.append(keep(inner) if keep else "")
            i += lc
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _link(inner: str) -> str:
    """``[[target|label]]`` -> label; ``[[target]]`` -> target; files and categories -> ''."""
    if inner.lower().startswith(_MEDIA) or ":" in inner.split("|", 1)[0]:
        return ""
    return inner.rsplit("|", 1)[-1]


def wikitext_paragraphs(wikitext: str, min_chars: int = 1, max_chars: int = 10**9) -> list[str]:
    """The prose paragraphs of one article's wikitext as plain text: references, comments,
    templates, tables, files and categories dropped; links and external links reduced to
    their labels; list items, headings and table rows skipped."""
    text = html.unescape(html.unescape(wikitext))  # the dump escapes entities twice
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _strip_nested(text, "[[", "]]", _link)
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _BARE_URL.sub("", text)
    text = _QUOTES.sub("", text)
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(_SKIP_LINE)]
        para = _SPACES.sub(" ", " ".join(lines).replace("\xa0", " ")).strip()
        para = re.sub(r"\(\s*[;,]?\s*\)\s?", "", para)  # "()" left by removed templates
        para = re.sub(r"\(\s*[;,]\s*", "(", para)
        para = re.sub(r"\s+([,.;:])", r"\1", para)
        if min_chars <= len(para) <= max_chars and para[-1:] in ".!?\"'" and \
                sum(c.isalpha() for c in para) > 0.7 * len(para):
            out.append(para)
    return out


def parse_wiki_dump(xml: str) -> dict[str, list[str]]:
    """{title: prose paragraphs} of every article page of a MediaWiki XML dump (redirects and
    pages without prose left out)."""
    articles = {}
    for m in _PAGE.finditer(xml):
        title, body = html.unescape(m.group(1)).strip(), m.group(2)
        if body.lstrip().lower().startswith("#redirect"):
            continue
        paras = wikitext_paragraphs(body)
        if paras:
            articles[title] = paras
    return articles


def wiki_articles() -> dict[str, list[str]]:
    """{title: paragraphs} of the Wikipedia articles in gensim's test data."""
    def build():
        raw = bz2.decompress(_gensim_member(WIKI_MEMBER))
        return parse_wiki_dump(raw.decode("utf-8"))

    return _cached_json("enwiki-gensim.json", build)


def news_articles() -> list[str]:
    """The 299 ABC news articles of the Lee corpus (gensim's ``lee_background.cor``)."""
    def build():
        text = _gensim_member(LEE_MEMBER).decode("utf-8", errors="replace")
        return [" ".join(line.split()) for line in text.splitlines() if line.strip()]

    return _cached_json("lee-news.json", build)


def corpus_status() -> str | None:
    """None when the corpora can be read, else a one-line reason naming what to fetch."""
    try:
        wiki_articles()
        news_articles()
    except TokensieveError as exc:
        return str(exc)
    return None
