"""The HTTP service with FastAPI's test client: compress / score on the embedded model, and
the safety rails (size, key, concurrency, timeouts, bad input) with injected fake models."""

import asyncio
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from tokensieve.errors import UsageError  # noqa: E402
from tokensieve.serve import ServeConfig, create_app  # noqa: E402
from tokensieve.text.protect import protected_spans  # noqa: E402
from tokensieve.text.result import CompressionResult, ScoredUnit  # noqa: E402

LOCAL = "http://127.0.0.1"  # the Host the service answers to (DNS rebinding check)


def fake_compress(text, keep=None, **kwargs):
    """Keeps the first half of the words; runs the protect regexes as compress does."""
    if kwargs.get("method") not in (None, "default"):
        raise UsageError(f"unknown method {kwargs['method']!r}")
    protected_spans(text, kwargs.get("protect", ()), timeout=kwargs["protect_timeout"])
    words = text.split()
    kept = " ".join(words[: max(1, len(words) // 2)])
    units = [ScoredUnit(0, len(words[0]), words[0], 1.0, True)]
    return CompressionResult(kept, len(words), len(kept.split()), len(words) // 2,
                             [(0, len(kept))], units, "default", "word", "text", {}, [])


def slow_compress(text, **kwargs):
    time.sleep(0.4)
    return fake_compress(text, **kwargs)


def fake_app(**settings):
    return create_app(ServeConfig(preload=False, **settings), compress_fn=fake_compress)


@pytest.mark.model
def test_compress_and_score_on_the_embedded_model(report_text):
    with TestClient(create_app(ServeConfig(preload=False)), base_url=LOCAL) as client:
        assert client.get("/health").json()["status"] == "ok"
        r = client.post("/v1/compress", json={"text": report_text[:2500], "keep": 0.5,
                                              "question": "What was the revenue?"})
        assert r.status_code == 200, r.text
        data = r.json()
        assert 0 < data["compressed_tokens"] <= data["target_tokens"] < data["original_tokens"]
        assert data["scores"] and {"start", "end", "score", "kept"} <= set(data["scores"][0])
        assert "".join(report_text[s:e] for s, e in data["kept_spans"]) == data["text"]
        r = client.post("/v1/score", json={"text": "The cat sat on the mat. Zebra quantum."})
        assert r.status_code == 200, r.text
        words = r.json()["words"]
        assert [w["text"] for w in words][:2] == ["The", "cat"]
        assert all(w["surprisal"] >= 0 for w in words)
        metrics = client.get("/metrics").text
        assert 'tokensieve_requests_total{method="POST",path="/v1/compress",status="200"} 1' \
            in metrics
        assert f'direction="in"}} {data["original_tokens"]}' in metrics
        assert 'tokensieve_request_seconds_bucket{path="/v1/compress",le="+Inf"} 1' in metrics


def test_bad_requests_get_json_4xx():
    with TestClient(fake_app(max_body_bytes=4096), base_url=LOCAL) as client:
        cases = [
            (client.post("/v1/compress", content=b"{not json",
                         headers={"content-type": "application/json"}), 400),
            (client.post("/v1/compress", json={"keep": 0.5}), 422),           # no text
            (client.post("/v1/compress", json={"text": "a b", "keep": 7}), 422),
            (client.post("/v1/compress", json={"text": "a b", "model": "/etc/passwd"}), 422),
            (client.post("/v1/compress", json={"text": "a b", "tokenizer": "/tmp/x"}), 422),
            (client.post("/v1/compress", json={"text": "a b", "method": "nope"}), 400),
            (client.post("/v1/compress", json={"text": "a b", "keep": 0.5,
                                               "target_tokens": 3}), 422),
            (client.post("/v1/compress", json=["text"]), 422),
            (client.post("/v1/compress", json={"text": "x " * 4000}), 413),
            (client.post("/v1/compress", json={"text": "a b", "protect": ["("]}), 400),
            (client.post("/v1/compress", json={"text": "a" * 2000 + "!",
                                               "protect": ["(a|aa)+$"]}), 400),  # too slow
            (client.get("/v1/nothing"), 404),
            (client.get("/v1/compress"), 405),
            (client.post("/v1/chat/completions", json={"messages": []}), 503),  # no upstream
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            assert response.json()["error"]["message"]
        chunked = client.post("/v1/compress", content=(b"x" * 1000 for _ in range(10)),
                              headers={"content-type": "application/json"})
        assert chunked.status_code == 413  # no Content-Length: counted while read
        ok = client.post("/v1/compress", json={"text": "one two three four", "keep": 0.5})
        assert ok.status_code == 200 and ok.json()["text"] == "one two"
        metrics = client.get("/metrics").text
        assert 'tokensieve_errors_total{path="/v1/compress",status="413"} 2' in metrics
        assert 'path="other",status="404"' in metrics
        client.get("/static/nothing.js")
        client.get("/static/../../etc/passwd")
        metrics = client.get("/metrics").text
        assert 'tokensieve_errors_total{path="/static",status="404"}' in metrics
        assert 'tokensieve_requests_total{method="GET",path="/v1/methods",' not in metrics
        client.get("/v1/methods")
        metrics = client.get("/metrics").text
        assert 'tokensieve_requests_total{method="GET",path="/v1/methods",' in metrics


def test_api_key():
    with TestClient(fake_app(api_key="s3cret"), base_url=LOCAL) as client:
        assert client.get("/health").status_code == 200
        body = {"text": "one two", "keep": 0.5}
        r = client.post("/v1/compress", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert client.post("/v1/compress", json=body,
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/compress", json=body,
                           headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/compress", json=body,
                           headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/metrics").status_code == 401


def test_bounded_concurrency_and_timeout():
    app = create_app(ServeConfig(preload=False, max_concurrency=1, queue_timeout=0.1,
                                 request_timeout=5), compress_fn=slow_compress)

    async def three_at_once():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            return await asyncio.gather(*[
                client.post("/v1/compress", json={"text": "a b c d", "keep": 0.5})
                for _ in range(3)])

    responses = asyncio.run(three_at_once())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 503, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "overloaded"

    app = create_app(ServeConfig(preload=False, request_timeout=0.1), compress_fn=slow_compress)
    with TestClient(app, base_url=LOCAL) as client:
        r = client.post("/v1/compress", json={"text": "a b c d", "keep": 0.5})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        time.sleep(0.5)  # the abandoned call ends and frees its slot
        assert client.post("/v1/compress", json={"text": "a b", "keep": 0.5}).status_code == 504


def test_an_unexpected_error_is_a_json_500_not_a_crash():
    def broken(text, **kwargs):
        raise RuntimeError("boom")

    app = create_app(ServeConfig(preload=False), compress_fn=broken)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        r = client.post("/v1/compress", json={"text": "a b", "keep": 0.5})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        assert client.get("/health").status_code == 200


def test_config_from_env():
    cfg = ServeConfig.from_env({"TOKENSIEVE_API_KEY": "k", "TOKENSIEVE_MAX_CONCURRENCY": "3",
                                "TOKENSIEVE_PROXY_ROLES": "user, tool",
                                "TOKENSIEVE_UPSTREAM": "http://127.0.0.1:9/v1/"}, port=9000)
    assert (cfg.api_key, cfg.max_concurrency, cfg.proxy_roles, cfg.upstream, cfg.port) == \
        ("k", 3, ("user", "tool"), "http://127.0.0.1:9/v1", 9000)
    with pytest.raises(UsageError):
        ServeConfig.from_env({"TOKENSIEVE_PORT": "eighty"})
    with pytest.raises(UsageError):
        ServeConfig(upstream="file:///etc/passwd")


def test_cli_serve_rejects_bad_settings(capsys):
    from tokensieve.cli import main

    assert main(["serve", "--max-concurrency", "0"]) == 2
    assert "max_concurrency" in capsys.readouterr().err
    assert main(["serve", "--upstream", "ftp://x"]) == 2


def test_cli_serve_flags_set_the_config_and_override_env(monkeypatch):
    from tokensieve.cli import build_parser, serve_config

    monkeypatch.setenv("TOKENSIEVE_QUEUE_TIMEOUT", "9")
    monkeypatch.setenv("TOKENSIEVE_PROXY_KEEP", "0.7")
    monkeypatch.setenv("TOKENSIEVE_THREADS", "3")
    args = build_parser().parse_args([
        "serve", "--queue-timeout", "30", "--request-timeout", "120", "--max-body-bytes",
        "50000", "--proxy-roles", "user, tool", "--proxy-min-tokens", "64", "--proxy-method",
        "surprisal", "--proxy-keep-numbers", "--model", "default", "--device", "cpu"])
    config = serve_config(args)
    assert (config.queue_timeout, config.request_timeout, config.max_body_bytes) == (30, 120,
                                                                                     50000)
    assert config.proxy_roles == ("user", "tool") and config.proxy_min_tokens == 64
    assert config.proxy_method == "surprisal" and config.proxy_keep_numbers is True
    assert config.proxy_keep == 0.7 and config.threads == 3  # no flag: the variable holds
    assert serve_config(build_parser().parse_args(["serve"])).proxy_keep_numbers is False


def test_cli_serve_bad_flag_value_is_one_line(capsys):
    from tokensieve.cli import main

    assert main(["serve", "--proxy-keep", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "proxy_keep" in err and "Traceback" not in err


@pytest.mark.model
def test_service_runs_the_learned_method_with_names_whole():
    text = ("The audit team met Margaret Okonkwo in Porto Alegre on Tuesday and later spoke "
            "with the New York Stock Exchange about the delayed listing of unit QX-4471.")
    with TestClient(create_app(ServeConfig(preload=False)), base_url=LOCAL) as client:
        r = client.post("/v1/compress", json={"text": text, "keep": 0.5, "method": "learned",
                                              "include_scores": False})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["granularity"] == "word" and out["compressed_tokens"] <= out["target_tokens"]
        for name in ("Margaret Okonkwo", "Porto Alegre", "New York Stock Exchange"):
            assert name in out["text"] or not any(w in out["text"] for w in name.split())
        r = client.post("/v1/compress", json={"text": text, "keep": 0.5, "finest": "token"})
        assert r.status_code == 422
