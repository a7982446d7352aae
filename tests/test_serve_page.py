"""The web page at ``/``: static files and their API-key exemption with the test client, and
the page itself in a real browser (Playwright driving the system's chromium) against the
service under uvicorn on loopback.

The browser tests need ``pip install playwright`` (the dev extra) and a chromium binary
(``apt-get install chromium``); never ``playwright install``, which downloads a browser.
With ``TOKENSIEVE_SCREENSHOT=1`` the main test writes docs/serve-page.png."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from served import Served  # noqa: E402

from tokensieve.serve import ServeConfig, create_app  # noqa: E402
from tokensieve.text.result import CompressionResult, ScoredUnit  # noqa: E402

LOCAL = "http://127.0.0.1"  # the Host the service answers to (DNS rebinding check)

ROOT = Path(__file__).parent.parent
STATIC = ROOT / "src" / "tokensieve" / "serve" / "static"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def fake_compress(text, keep=None, **kwargs):
    """Keeps the first half of the words; one scored unit per word."""
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    n = max(1, len(words) // 2)
    units = [ScoredUnit(s, e, w, float(len(w)), i < n) for i, (s, e, w) in enumerate(words)]
    kept = text[: words[n - 1][1]]
    return CompressionResult(kept, len(words), n, n, [(0, len(kept))], units, "default", "word",
                             "text", {"total": 0.01}, [])


def fake_app(**settings):
    return create_app(ServeConfig(preload=False, **settings), compress_fn=fake_compress)


# ---------------------------------------------------------------- without a browser

def test_page_and_static_files_are_served_and_open_without_the_key():
    with TestClient(fake_app(api_key="s3cret"), base_url=LOCAL) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="compress-form"' in page.text and "/static/app.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
            r = client.get(f"/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], name
        missing = client.get("/static/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
        # exempt from the key, but no way out of the static folder
        assert client.get("/static/..%2Fapp.py").status_code == 404
        assert client.get("/static/..%2F..%2Fserve%2Fconfig.py").status_code == 404
        # the data endpoints still need the key
        for path in ("/v1/methods", "/metrics", "/docs", "/openapi.json", "/staticx"):
            assert client.get(path).status_code == 401, path
        assert client.post("/v1/compress", json={"text": "a b"}).status_code == 401
        r = client.get("/v1/methods", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_methods_endpoint():
    from tokensieve.text import FORMATS, GRANULARITIES, METHODS

    with TestClient(fake_app(), base_url=LOCAL) as client:
        data = client.get("/v1/methods").json()
    assert data["methods"] == list(METHODS) and data["default_method"] in data["methods"]
    assert data["granularities"] == list(GRANULARITIES) and data["formats"] == list(FORMATS)


def test_static_files_are_package_data():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["tokensieve"]
    static = ROOT / "src" / "tokensieve" / "serve" / "static"
    names = {p.name for p in static.iterdir()}
    assert {"index.html", "app.js", "style.css"} <= names
    assert any(static.relative_to(ROOT / "src" / "tokensieve").joinpath(n).match(pat)
               for pat in patterns for n in names)
    # no code or style from elsewhere, and no HTML built from strings
    for name in names:
        text = (static / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name
    assert "innerHTML" not in (static / "app.js").read_text(encoding="utf-8")


def test_heatmap_offsets_count_code_points_like_the_server():
    """The server's offsets are code points; offsets.js maps them to JavaScript's UTF-16
    indexes, so a heat map after an emoji still lines up (run with node when present)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    text = "Launch 🚀 went well 👍🏽, costs €4.2M; next: 日本 🇯🇵 rollout."
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    script = ("const { utf16Offsets } = require(process.argv[1]);"
              "const { text, spans } = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "const at = utf16Offsets(text);"
              "console.log(JSON.stringify({ n: at.length - 1,"
              "  words: spans.map(([s, e]) => text.slice(at[s], at[e])) }));")
    run = subprocess.run([node, "-e", script, str(STATIC / "offsets.js")], text=True,
                         input=json.dumps({"text": text, "spans": spans}), capture_output=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["n"] == len(text) and out["words"] == [text[s:e] for s, e in spans]
    app_js = (STATIC / "app.js").read_text(encoding="utf-8")
    assert "utf16Offsets(original)" in app_js  # the heat map uses it
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    assert index.index("/static/offsets.js") < index.index("/static/app.js")


def test_no_way_out_of_the_static_folder_with_a_raw_path():
    """Paths sent byte for byte (http.client does not normalise ``..`` as httpx does)."""
    import http.client

    with Served(fake_app(api_key="s3cret")) as url:
        port = int(url.rsplit(":", 1)[1])
        for path in ("/static/../page.py", "/static/../../serve/app.py",
                     "/static/../../../../../../etc/passwd", "/static/..%2Fpage.py",
                     "/static/%2e%2e/page.py", "/static//etc/passwd"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace")
            conn.close()
            assert response.status == 404, (path, response.status)
            assert "def add_page_routes" not in body and "root:" not in body, path
        # the same raw path machinery does reach a real file inside the folder
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/static/../static/app.js")
        response = conn.getresponse()
        assert response.status == 200 and b"use strict" in response.read()
        conn.close()


# ---------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright (the dev extra); "
                    "do not run `playwright install`, the test uses the system's chromium")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH: apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                     headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    page.problems = problems
    yield page
    context.close()


@pytest.fixture(scope="module")
def real_server():
    with Served(create_app(ServeConfig(preload=False))) as url:
        yield url


def sample(report_text: str) -> str:
    """The report's first ~1200 characters, cut after a sentence."""
    head = report_text[:1200]
    return head[: head.rfind(".") + 1]


@pytest.mark.model
def test_compress_in_the_browser(page, real_server, report_text):
    from playwright.sync_api import expect

    text = sample(report_text)
    page.goto(real_server + "/")
    expect(page).to_have_title(re.compile("tokensieve"))
    expect(page.locator("#method option")).to_have_count(len(_methods(real_server)))
    page.fill("#text", text)
    expect(page.locator("#text-count")).to_have_text(f"{len(text):,} characters")
    page.fill("#keep", "0.7")
    expect(page.locator("#keep-value")).to_have_text("0.70")
    page.fill("#keep", "0.4")
    expect(page.locator("#keep-value")).to_have_text("0.40")
    expect(page.locator("#results")).to_be_hidden()
    # hold the request until the busy state has been seen: a warm server on an idle machine
    # answers before a check could catch the spinner
    held = []

    def hold(route):
        held.append(route)

    page.route("**/v1/compress", hold)
    page.click("#compress")
    expect(page.locator("#busy")).to_be_visible()
    expect(page.locator("#compress")).to_be_disabled()
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(25)
    assert len(held) == 1, "the page did not send one compress request"
    expect(page.locator("#results")).to_be_hidden()
    held[0].continue_()
    page.unroute("**/v1/compress")
    expect(page.locator("#results")).to_be_visible()
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()

    shown = page.input_value("#compressed")
    data = httpx.post(real_server + "/v1/compress", timeout=60, json={
        "text": text, "keep": 0.4, "method": "default", "granularity": "auto",
        "format": "text", "include_scores": True}).json()
    assert shown == data["text"]
    assert 0 < len(shown) < len(text)
    assert all(text[s:e] in text for s, e in data["kept_spans"])
    assert page.text_content("#original-tokens") == str(data["original_tokens"])
    assert page.text_content("#compressed-tokens") == str(data["compressed_tokens"])
    assert page.text_content("#target-tokens") == str(data["target_tokens"])
    assert page.text_content("#kept-fraction") == f"{100 * data['kept_fraction']:.1f}%"
    assert re.fullmatch(r"\d+\.\d\d s \(server \d+\.\d\d s\)", page.text_content("#elapsed"))

    # the heat map: the original text, one span per scored unit, dropped ones marked
    scores = data["scores"]
    units = page.locator("#heatmap .u")
    expect(units).to_have_count(len(scores))
    assert page.text_content("#heatmap") == text
    shown_units = page.eval_on_selector_all("#heatmap .u", """els => els.map(e => [
        e.textContent, e.classList.contains('kept'), e.classList.contains('dropped'),
        e.classList.contains('protected'), parseFloat(e.style.getPropertyValue('--v'))])""")
    assert [u[0] for u in shown_units] == [s["text"] for s in scores]
    assert [u[1] for u in shown_units] == [s["kept"] for s in scores]
    assert [u[2] for u in shown_units] == [not s["kept"] for s in scores]
    assert [u[3] for u in shown_units] == [s["protected"] for s in scores]
    assert any(u[2] for u in shown_units) and any(u[1] for u in shown_units)
    values = [u[4] for u in shown_units]
    assert min(values) == 0 and max(values) == 1
    best = max(range(len(scores)), key=lambda i: scores[i]["score"])
    assert values[best] == 1
    # the highest-scored units are coloured differently from the lowest
    colours = page.eval_on_selector_all(
        "#heatmap .u", "els => els.map(e => getComputedStyle(e).backgroundColor)")
    worst = min(range(len(scores)), key=lambda i: scores[i]["score"])
    assert colours[best] != colours[worst]

    page.click("#copy")
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == shown
    assert page.problems == []

    if os.environ.get("TOKENSIEVE_SCREENSHOT") == "1":
        save_screenshot(page)


def save_screenshot(page) -> None:
    """docs/serve-page.png: the page after a question-aware compression (< 300 KB)."""
    from playwright.sync_api import expect

    page.fill("#question", "What was the revenue and the net income?")
    page.click("#compress")
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#results")).to_be_visible()
    page.evaluate("document.activeElement.blur(); document.getElementById('text').scrollTop = 0")
    path = ROOT / "docs" / "serve-page.png"
    page.screenshot(path=str(path), full_page=True)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _methods(url: str) -> list[str]:
    return httpx.get(url + "/v1/methods", timeout=10).json()["methods"]


@pytest.mark.model
def test_server_errors_are_shown(page, real_server):
    from playwright.sync_api import expect

    page.goto(real_server + "/")
    page.fill("#text", "   ")
    page.click("#compress")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(page.locator("#error-message")).to_contain_text("nothing to compress")
    expect(page.locator("#error-title")).to_have_text("invalid input (400)")
    expect(page.locator("#results")).to_be_hidden()
    expect(page.locator("#compress")).to_be_enabled()
    # a file picked in the page fills the text box
    note = {"name": "notes.md", "mimeType": "text/markdown",
            "buffer": b"# Notes\n\nThe launch moved to May."}
    page.set_input_files("#file", files=[note])
    expect(page.locator("#text")).to_have_value("# Notes\n\nThe launch moved to May.")
    expect(page.locator("#file-name")).to_have_text("· from notes.md")
    expect(error).to_be_hidden()
    # a file dropped on the text box fills it too; a binary file is refused visibly
    drop = """([name, body]) => {
        const data = new DataTransfer();
        data.items.add(new File([body], name, {type: "text/plain"}));
        const box = document.getElementById("text");
        box.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true,
                                                     cancelable: true}));
        box.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true,
                                                 cancelable: true}));
    }"""
    page.evaluate(drop, ["minutes.txt", "Minutes: the board approved budget B-17."])
    expect(page.locator("#text")).to_have_value("Minutes: the board approved budget B-17.")
    expect(page.locator("#file-name")).to_have_text("· from minutes.txt")
    page.evaluate(drop, ["image.bin", "GIF89a\u0000\u0001"])
    expect(error).to_be_visible()
    expect(page.locator("#error-message")).to_contain_text("image.bin does not look like a text")
    expect(page.locator("#text")).to_have_value("Minutes: the board approved budget B-17.")


def test_api_key_in_the_browser(page):
    from playwright.sync_api import expect

    with Served(fake_app(api_key="s3cret")) as url:
        page.goto(url + "/")
        expect(page.locator("#compress-form")).to_be_visible()  # the page loads without a key
        expect(page.locator("#key-box")).to_be_visible()          # /v1/methods said 401
        page.fill("#text", "alpha beta gamma delta epsilon zeta")
        page.click("#compress")
        expect(page.locator("#error")).to_be_visible()
        expect(page.locator("#error-title")).to_have_text("unauthorized (401)")
        expect(page.locator("#error-message")).to_contain_text("API key")
        expect(page.locator("#results")).to_be_hidden()

        page.fill("#api-key", "s3cret")
        page.click("#compress")
        expect(page.locator("#results")).to_be_visible()
        expect(page.locator("#error")).to_be_hidden()
        assert page.input_value("#compressed") == "alpha beta gamma"
        assert page.text_content("#original-tokens") == "6"
        assert page.text_content("#compressed-tokens") == "3"
        expect(page.locator("#heatmap .u.dropped")).to_have_count(3)
        assert page.evaluate("sessionStorage.getItem('tokensieve.apiKey')") == "s3cret"
        assert page.evaluate("localStorage.length") == 0

        page.fill("#api-key", "wrong")
        page.click("#compress")
        expect(page.locator("#error-title")).to_have_text("unauthorized (401)")


def test_heatmap_with_emoji_in_the_browser(page):
    """Server offsets count code points; the heat map still shows the text as it was."""
    from playwright.sync_api import expect

    text = "Launch 🚀 went  well 👍🏽,\ncosts €4.2M; next: 日本 🇯🇵 rollout."
    words = re.findall(r"\S+", text)
    with Served(fake_app()) as url:
        page.goto(url + "/")
        page.fill("#text", text)
        page.click("#compress")
        expect(page.locator("#results")).to_be_visible()
        expect(page.locator("#heatmap .u")).to_have_count(len(words))
        assert page.text_content("#heatmap") == text
        shown = page.eval_on_selector_all("#heatmap .u", "els => els.map(e => e.textContent)")
        assert shown == words
        assert page.problems == []
