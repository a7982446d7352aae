"""Hostile requests to the service and the proxy, without a model: text and message limits,
protect regexes, JSON-only POSTs, the Host check, bounded metrics labels, lone surrogates,
JSON tool messages and what the upstream receives (a mock transport stands in for it)."""

import functools
import json
import re
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from tokensieve.errors import UsageError  # noqa: E402
from tokensieve.serve import ServeConfig, create_app  # noqa: E402
from tokensieve.text import compress  # noqa: E402
from tokensieve.text.counting import TokenCounter  # noqa: E402

LOCAL = "http://127.0.0.1"
CHEAP_BOMB = "(?:X{100}){200}"  # 20,000 units: over the limit, ~5 MB if ever compiled
# the real compress, counting words and scoring by word frequency: no model needed
light_compress = functools.partial(compress, tokenizer=str.split)


def app_with(upstream_seen: list | None = None, **settings):
    """The service on the light compress; with ``upstream_seen``, a mock upstream that
    records (headers, body) and answers with the sizes of the messages it got."""
    settings.setdefault("proxy_method", "wordfreq")
    if upstream_seen is not None:
        settings.setdefault("upstream", "http://upstream.test/v1")
    app = create_app(ServeConfig(preload=False, **settings), compress_fn=light_compress,
                     score_fn=lambda *a, **k: pytest.fail("the model was called"))
    app.state.service._counter = TokenCounter(str.split)
    if upstream_seen is not None:
        def answer(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            upstream_seen.append((dict(request.headers), body))
            return httpx.Response(200, json={"sizes": [len(m["content"])
                                                       for m in body["messages"]]})

        app.state.upstream_client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return app


def raw_json(body) -> dict:
    """A JSON body sent as bytes, so that a lone surrogate goes out as its \\ud800 escape."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def chat(*contents, role="user", **extra):
    return {"model": "m", "messages": [{"role": role, "content": c} for c in contents], **extra}


# ---------------------------------------------------------------- the service

def test_text_over_max_chars_is_413_before_any_work():
    with TestClient(app_with(max_chars=100), base_url=LOCAL) as client:
        for path, body in [("/v1/compress", {"text": "w " * 51}),
                           ("/v1/compress", {"text": ["w " * 25, "w " * 25 + "x"]}),  # + "\n\n"
                           ("/v1/compress", {"text": "w " * 40, "question": "q" * 30}),
                           ("/v1/score", {"text": "w " * 51})]:
            r = client.post(path, json=body)
            assert r.status_code == 413, (path, r.text)
            message = r.json()["error"]["message"]
            assert "limit of 100" in message and "TOKENSIEVE_MAX_CHARS" in message
        r = client.post("/v1/compress", json={"text": "w " * 50, "keep": 0.5,
                                              "method": "wordfreq"})
        assert r.status_code == 200, r.text


def test_bad_protect_patterns_are_400_before_queueing():
    with TestClient(app_with(), base_url=LOCAL) as client:
        # over the limit, yet cheap to compile: the real bombs are only ever run under a
        # memory cap (test_protect.py), so this test cannot hurt the machine on old code
        for pattern, words in [(CHEAP_BOMB, "over the limit of 10,000"),
                               ("a" * 501, "over the limit of 500"),
                               ("(", "invalid protect regex")]:
            t = time.perf_counter()
            r = client.post("/v1/compress", json={"text": "a b c", "protect": [pattern]})
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
            assert time.perf_counter() - t < 1


def test_protect_time_limit_holds_over_a_list_of_documents():
    docs = ["a" * 12] * 3 + ["a" * 11 + "!"]  # each alone is quick, joined it never ends
    app = app_with(pattern_timeout=0.5, request_timeout=20)
    with TestClient(app, base_url=LOCAL) as client:
        t = time.perf_counter()
        r = client.post("/v1/compress", json={"text": docs, "keep": 0.5, "method": "wordfreq",
                                              "protect": [r"(?:a|aa|\n)+$"]})
        assert r.status_code == 400, r.text
        assert "took longer than 0.5 s" in r.json()["error"]["message"]
        assert time.perf_counter() - t < 10
        # the slot is free: the next request is served, not 503
        r = client.post("/v1/compress", json={"text": "one two three four", "keep": 0.5,
                                              "method": "wordfreq"})
        assert r.status_code == 200, r.text


def test_post_bodies_must_be_json():
    seen: list = []
    with TestClient(app_with(seen), base_url=LOCAL) as client:
        for path in ("/v1/compress", "/v1/score", "/v1/chat/completions"):
            for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"content-type": ctype} if ctype else {}
                r = client.post(path, content=json.dumps(chat("hi")), headers=headers)
                assert r.status_code == 415, (path, ctype, r.text)
                assert "application/json" in r.json()["error"]["message"]
        assert seen == []  # the upstream key was never spent
        r = client.post("/v1/chat/completions", content=json.dumps(chat("hi")),
                        headers={"content-type": "application/json; charset=utf-8"})
        assert r.status_code == 200 and len(seen) == 1


def test_host_header_must_name_this_server():
    seen: list = []
    app = app_with(seen, port=8000)
    with TestClient(app, base_url="http://attacker.example") as client:  # DNS rebinding
        r = client.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_host"
        assert "TOKENSIEVE_ALLOWED_HOSTS" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 400 and seen == []
        for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:8000", "[::1]:8000"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
    allowed = app_with(host="10.0.0.5", allowed_hosts=("api.example.com",))
    with TestClient(allowed, base_url="http://10.0.0.5:8000") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"host": "api.example.com"}).status_code == 200
        assert client.get("/health", headers={"host": "other.example"}).status_code == 400
    # bound to every interface and no names given: the Host cannot be known, so any passes
    with TestClient(app_with(host="0.0.0.0"), base_url="http://anything.example") as client:
        assert client.get("/health").status_code == 200


def test_unknown_methods_share_one_metrics_label():
    with TestClient(app_with(), base_url=LOCAL) as client:
        for i in range(50):
            client.request(f"X{i:03d}", "/v1/compress")
        client.request("GET", "/health")
        metrics = client.get("/metrics").text
    assert "X000" not in metrics and "X049" not in metrics
    assert 'tokensieve_requests_total{method="other",path="/v1/compress",status="405"} 50' \
        in metrics
    assert 'method="GET",path="/health",status="200"} 1' in metrics


def test_lone_surrogates_are_400_not_500():
    seen: list = []
    with TestClient(app_with(seen), base_url=LOCAL, raise_server_exceptions=False) as client:
        cases = [("/v1/compress", {"text": "a b c d", "question": "why \ud800?"}, "question"),
                 ("/v1/compress", {"text": ["a b", "c \udfff d"]}, "text[1]"),
                 ("/v1/compress", {"text": "a b", "keep_text": ["\ud800"]}, "keep_text[0]"),
                 ("/v1/score", {"text": "a b", "question": "\ud800"}, "question"),
                 ("/v1/chat/completions", chat("fine", "bad \ud800"), "messages[1].content"),
                 ("/v1/chat/completions",
                  chat([{"type": "text", "text": "x \udc00"}]), "messages[0].content")]
        for path, body, where in cases:
            r = client.post(path, **raw_json(body))
            assert r.status_code == 400, (path, r.text)
            message = r.json()["error"]["message"]
            assert where in message and "surrogate" in message, message
        assert seen == []


def test_compress_checks_the_question_as_user_text():
    from tokensieve.errors import InputError

    with pytest.raises(InputError, match="the question .*surrogate"):
        light_compress("a b c d", keep=0.5, method="wordfreq", question="why \ud800?")


# ---------------------------------------------------------------- the proxy

def test_proxy_bounds_messages_and_characters():
    seen: list = []
    with TestClient(app_with(seen, max_messages=3, max_chars=200), base_url=LOCAL) as client:
        r = client.post("/v1/chat/completions", json=chat("a", "b", "c", "d"))
        assert r.status_code == 413 and "limit of 3" in r.json()["error"]["message"]
        assert "TOKENSIEVE_MAX_MESSAGES" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json=chat("w " * 101))
        assert r.status_code == 413 and "TOKENSIEVE_MAX_CHARS" in r.json()["error"]["message"]
        # what is not compressed is not charged: another role, or compression switched off
        assert client.post("/v1/chat/completions",
                           json=chat("w " * 101, role="assistant")).status_code == 200
        assert client.post("/v1/chat/completions", json=chat(
            "w " * 101, tokensieve={"enabled": False})).status_code == 200
        r = client.post("/v1/chat/completions", json=chat(
            "w", tokensieve={"protect": [CHEAP_BOMB]}))
        assert r.status_code == 400 and "10,000" in r.json()["error"]["message"]
        assert len(seen) == 2


def test_proxy_compresses_only_what_it_checked_and_charged():
    """One rule for a message's text: a bare string inside a content list is not a text
    part, so it was neither checked nor charged against max_chars; it was compressed all the
    same (a second, looser rule). Now it passes through untouched, like an image part."""
    seen: list = []
    bare = "v " * 150                       # 300 characters, over max_chars on its own
    content = [{"type": "text", "text": "w " * 50}, bare]
    with TestClient(app_with(seen, max_chars=200, proxy_min_tokens=5),
                    base_url=LOCAL) as client:
        r = client.post("/v1/chat/completions", json=chat(content))
    assert r.status_code == 200, r.text
    assert r.headers["x-tokensieve-messages-compressed"] == "1"
    sent = seen[-1][1]["messages"][0]["content"]
    assert sent[1] == bare
    assert len(sent[0]["text"]) < len("w " * 50)


def test_proxy_compresses_json_tool_messages_as_json():
    seen: list = []
    tool = json.dumps({"results": [
        {"title": f"result {i}", "rank": i, "snippet": "the quick brown fox jumps over the "
         "lazy dog near the old river bank while the sun sets " * 3} for i in range(6)]})
    messages = [{"role": "user", "content": "What did the fox do?"},
                {"role": "tool", "tool_call_id": "c1", "content": tool}]
    with TestClient(app_with(seen, proxy_min_tokens=20), base_url=LOCAL) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert r.status_code == 200 and r.headers["x-tokensieve-messages-compressed"] == "1"
    sent = seen[-1][1]["messages"][1]["content"]
    assert len(sent) < len(tool) * 0.8
    data = json.loads(sent)  # valid JSON: keys and numbers stay, only string values shrink
    assert [sorted(x) for x in data["results"]] == [["rank", "snippet", "title"]] * 6
    assert [x["rank"] for x in data["results"]] == list(range(6))


def test_proxy_sends_the_right_authorization_upstream():
    for settings, client_auth, expected in [
            ({"upstream_api_key": "up-key"}, "Bearer client", "Bearer up-key"),
            ({"upstream_api_key": "up-key", "api_key": "ours"}, "Bearer ours", "Bearer up-key"),
            ({}, "Bearer client-key", "Bearer client-key"),   # forwarded as it came
            ({"api_key": "ours"}, "Bearer ours", None)]:      # our key never leaves
        seen: list = []
        with TestClient(app_with(seen, **settings), base_url=LOCAL) as client:
            r = client.post("/v1/chat/completions", json=chat("hi"),
                            headers={"authorization": client_auth})
        assert r.status_code == 200, (settings, r.text)
        assert seen[0][0].get("authorization") == expected, settings


# ---------------------------------------------------------------- settings

def test_proxy_protect_from_env_is_not_split_on_commas():
    cfg = ServeConfig.from_env({"TOKENSIEVE_PROXY_PROTECT": r"ORDER-\d{4,8}"}, preload=False)
    assert cfg.proxy_protect == (r"ORDER-\d{4,8}",)
    cfg = ServeConfig.from_env({"TOKENSIEVE_PROXY_PROTECT": "A{1,2}\nB,C\n"}, preload=False)
    assert cfg.proxy_protect == ("A{1,2}", "B,C")
    cfg = ServeConfig.from_env({"TOKENSIEVE_PROXY_PROTECT": '["x{2,3}", "y,z"]'},
                               preload=False)
    assert cfg.proxy_protect == ("x{2,3}", "y,z")
    for bad in (CHEAP_BOMB, "[1, 2]", "[oops"):
        with pytest.raises(UsageError, match="TOKENSIEVE_PROXY_PROTECT|limit"):
            ServeConfig.from_env({"TOKENSIEVE_PROXY_PROTECT": bad}, preload=False)


def test_empty_api_key_refuses_to_start():
    for name in ("TOKENSIEVE_API_KEY", "TOKENSIEVE_UPSTREAM_API_KEY"):
        for value in ("", "  "):
            with pytest.raises(UsageError, match=rf'empty \({name}=""\)'):
                ServeConfig.from_env({name: value})
    assert ServeConfig.from_env({}).api_key is None


def test_cli_empty_api_key_is_a_usage_error(capsys, monkeypatch):
    from tokensieve.cli import main

    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("started without a key"))
    assert main(["serve", "--api-key", ""]) == 2
    assert "api_key is set but empty" in capsys.readouterr().err


def test_every_environment_variable_is_in_the_readme():
    from dataclasses import fields
    from pathlib import Path

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    names = {f"TOKENSIEVE_{f.name.upper()}" for f in fields(ServeConfig) if f.name != "extra"}
    for path in [*(root / "src").rglob("*.py"), *(root / "tests").glob("*.py")]:
        names |= set(re.findall(r"TOKENSIEVE_[A-Z0-9_]*[A-Z0-9]", path.read_text("utf-8")))
    assert sorted(n for n in names if f"`{n}" not in readme) == []
