"""The OpenAI-compatible proxy: the real ``openai`` client against the proxy, which forwards
to a fake upstream; both run under uvicorn on loopback in threads."""

import json
import socket

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from served import Served  # noqa: E402

from tokensieve.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.model
UPSTREAM_KEY = "upstream-key"


def fake_upstream(seen: list) -> FastAPI:
    """Answers with the number of characters of each message it received; like a real API
    it refuses a request without the deployment's upstream key (401)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}}, status_code=401)
        body = await request.json()
        seen.append(body)
        if body["model"] == "rate-limited":  # the upstream's own error, to be passed through
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit",
                                           "code": "rate_limit_exceeded"}},
                                status_code=429, headers={"retry-after": "7"})
        answer = json.dumps([len(m.get("content") or "") for m in body["messages"]])
        if body.get("stream"):
            def events():
                for i, piece in enumerate([answer[: len(answer) // 2], answer[len(answer) // 2:]]):
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                             "model": body["model"], "choices": [{
                                 "index": 0, "delta": {"content": piece},
                                 "finish_reason": None if i == 0 else "stop"}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({
            "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    return app


@pytest.fixture(scope="module")
def proxy():
    seen: list = []
    with Served(fake_upstream(seen)) as upstream:
        config = ServeConfig(preload=False, upstream=f"{upstream}/v1", api_key="proxy-key",
                             upstream_api_key=UPSTREAM_KEY, proxy_min_tokens=100,
                             proxy_keep=0.5)
        with Served(create_app(config)) as url:
            yield url, seen


def test_openai_client_through_the_proxy(proxy, report_text):
    url, seen = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="proxy-key", max_retries=0)
    context = report_text[:3000]
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": context},
                {"role": "user", "content": "What was the revenue?"}]
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)
    completion = raw.parse()
    sizes = json.loads(completion.choices[0].message.content)
    assert sizes[0] == len("Answer briefly.") and sizes[2] == len("What was the revenue?")
    assert 0 < sizes[1] < len(context)                    # the long message was compressed
    before = int(raw.headers["x-tokensieve-tokens-before"])
    after = int(raw.headers["x-tokensieve-tokens-after"])
    assert after < before and raw.headers["x-tokensieve-messages-compressed"] == "1"
    assert "tokensieve" not in seen[-1]
    # per request: switch compression off
    completion = client.chat.completions.create(model="m", messages=messages,
                                                extra_body={"tokensieve": {"enabled": False}})
    assert json.loads(completion.choices[0].message.content)[1] == len(context)
    assert "tokensieve" not in seen[-1]


def test_streaming_passes_through(proxy, report_text):
    url, _ = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="proxy-key", max_retries=0)
    messages = [{"role": "user", "content": report_text[:3000] + "\nWhat was the revenue?"}]
    stream = client.chat.completions.create(model="m", messages=messages, stream=True,
                                            extra_body={"tokensieve": {"keep": 0.3}})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert 0 < json.loads(text)[0] < len(messages[0]["content"]) * 0.6


def test_protected_patterns_survive(proxy, report_text):
    url, seen = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="proxy-key", max_retries=0)
    half = len(report_text[:3000]) // 2
    context = report_text[:half] + " Ticket ORDER-7731-XQ was filed. " + report_text[half:3000]
    client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": context + "\nWhat was the revenue?"}],
        extra_body={"tokensieve": {"keep": 0.2, "protect": [r"ORDER-\d+-[A-Z]+"]}})
    sent = seen[-1]["messages"][0]["content"]
    assert len(sent) < len(context) * 0.5 and "ORDER-7731-XQ" in sent


def test_proxy_errors(proxy):
    url, _ = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="proxy-key", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"tokensieve": {"model": "/etc/passwd"}})


def test_upstream_errors_come_back_unchanged(proxy):
    url, _ = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="proxy-key", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="rate-limited",
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["message"] == "slow down"


def test_unreachable_upstream_is_a_502():
    from fastapi.testclient import TestClient

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(preload=False, upstream=f"http://127.0.0.1:{port}/v1"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_unreachable"
        assert r.headers["x-tokensieve-tokens-before"] == r.headers["x-tokensieve-tokens-after"]
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": "hi"})
        assert r.status_code == 422


def test_json_tool_message_reaches_the_upstream_as_json(proxy, report_text):
    url, seen = proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="proxy-key", max_retries=0)
    paragraphs = [p for p in report_text.split("\n\n") if len(p) > 200][:4]
    tool = json.dumps({"documents": [{"id": i, "text": p} for i, p in enumerate(paragraphs)]})
    client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "What was the revenue?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": tool}])
    sent = seen[-1]["messages"][2]["content"]
    data = json.loads(sent)
    assert len(sent) < len(tool) and [d["id"] for d in data["documents"]] == [0, 1, 2, 3]
