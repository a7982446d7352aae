"""``POST /v1/chat/completions``: an OpenAI-compatible compressing proxy.

The long messages of a chat request (roles, length threshold and kept fraction set per
deployment and narrowed per request by an extra ``"tokensieve": {...}`` field, which is
removed before forwarding) are compressed, the last user message driving question-aware
compression; the request goes to ``{upstream}/chat/completions`` and the upstream's answer
comes back unchanged (status, body, server-sent events when ``stream`` is true), with headers
``X-Tokensieve-Tokens-Before`` / ``-After`` / ``-Messages-Compressed``.

A message whose text is JSON (a tool's result, say) is compressed with ``format="json"``,
so the upstream still receives valid JSON. Every message's text is checked as user text;
the number of messages and the characters to compress are bounded (``max_messages``,
``max_chars``: 413)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..text.protect import MAX_PATTERNS
from .errors import ServiceError, check_chars, check_patterns, error_response, user_text

QUESTION_CHARS = 1000   # the tail of the last user message used as the question
PASS_HEADERS = ("content-type", "openai-organization", "openai-processing-ms",
                "openai-version", "x-request-id", "retry-after")


class ProxyOptions(BaseModel):
    """Per-request settings (``"tokensieve": {...}``); unset ones take the deployment's."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    roles: list[str] | None = Field(None, max_length=16)
    min_tokens: int | None = Field(None, ge=0)
    keep: float | None = Field(None, gt=0, le=1)
    method: str | None = None
    protect: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)
    keep_numbers: bool | None = None


def _client(app: FastAPI, timeout: float) -> httpx.AsyncClient:
    client = getattr(app.state, "upstream_client", None)
    if client is None:
        client = app.state.upstream_client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=False)
    return client


async def close_client(app: FastAPI) -> None:
    client = getattr(app.state, "upstream_client", None)
    if client is not None:
        app.state.upstream_client = None
        await client.aclose()


def _parts(content: Any) -> list[tuple[Any, str | None]]:
    """Each part of a message's content with its text, by the one rule for what is text:
    the whole content when it is a string, else a part ``{"type": "text", "text": "..."}``.
    Any other part (an image, a bare string in a list) has no text and passes through
    untouched; content that is neither a string nor a list has no parts."""
    if isinstance(content, str):
        return [(content, content)]
    if not isinstance(content, list):
        return []
    return [(p, p["text"] if isinstance(p, dict) and p.get("type") == "text"
             and isinstance(p.get("text"), str) else None) for p in content]


def _message_text(content: Any) -> str | None:
    """All the text of a message (its text parts joined by newlines), or None."""
    texts = [text for _, text in _parts(content) if text is not None]
    return "\n".join(texts) if texts else None


def _question(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            text = _message_text(m.get("content"))
            if text and text.strip():
                return text[-QUESTION_CHARS:]
            return None
    return None


def _is_json(text: str) -> bool:
    """A JSON object or array (what a tool returns), not a bare word or number."""
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse(body: bytes, config) -> tuple[dict[str, Any], ProxyOptions]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(400, "invalid_json", "the request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ServiceError(422, "invalid_request", "the request body must be a JSON object.")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServiceError(422, "invalid_request", "'messages' must be a non-empty list.")
    if len(messages) > config.max_messages:
        raise ServiceError(413, "too_many_messages", f"the request has {len(messages):,} "
                           f"messages, over this server's limit of {config.max_messages:,}; "
                           "raise it with TOKENSIEVE_MAX_MESSAGES (--max-messages).")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ServiceError(422, "invalid_request",
                               f"messages[{i}] must be an object with a string 'role'.")
        user_text(_message_text(m.get("content")), f"messages[{i}].content")
    raw = data.pop("tokensieve", None)
    try:
        options = ProxyOptions.model_validate(raw or {})
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ServiceError(422, "invalid_request", f"bad 'tokensieve' options: {msg}") from None
    check_patterns(options.protect)
    if options.enabled:  # what the model would read: the messages of the compressed roles
        roles = set(options.roles if options.roles is not None else config.proxy_roles)
        chars = sum(len(_message_text(m.get("content")) or "") for m in messages
                    if m["role"] in roles)
        check_chars(config, chars, "the messages to compress hold")
    return data, options


def add_proxy_routes(app: FastAPI, service) -> None:
    config = service.config

    async def compress_messages(data: dict[str, Any], opts: ProxyOptions) -> tuple[int, int, int]:
        messages = data["messages"]
        roles = set(opts.roles if opts.roles is not None else config.proxy_roles)
        min_tokens = opts.min_tokens if opts.min_tokens is not None else config.proxy_min_tokens
        keep = opts.keep if opts.keep is not None else config.proxy_keep
        method = opts.method or config.proxy_method
        protect = [*config.proxy_protect, *opts.protect]
        keep_numbers = (opts.keep_numbers if opts.keep_numbers is not None
                        else config.proxy_keep_numbers)
        question = _question(messages)
        before = after = done = 0
        for m in messages:
            content = m.get("content")
            text = _message_text(content)
            if not text:
                continue
            n = await service.gate.run(service.count_tokens, text)
            before += n
            if not opts.enabled or m["role"] not in roles or n <= min_tokens:
                after += n
                continue
            new_parts, n_after = [], 0
            for part, part_text in _parts(content):
                if part_text is None or not part_text.strip():
                    new_parts.append(part)
                    if part_text is not None:
                        n_after += await service.gate.run(service.count_tokens, part_text)
                    continue
                result = await service.gate.run(
                    service.compress_sync, part_text, keep=keep, question=question,
                    method=method, protect=protect, keep_numbers=keep_numbers,
                    format="json" if _is_json(part_text) else "text", allow_over_budget=True)
                n_after += result.compressed_tokens
                new_parts.append(result.text if isinstance(part, str)
                                 else {**part, "text": result.text})
            m["content"] = new_parts[0] if isinstance(content, str) else new_parts
            after += n_after
            done += 1
        return before, after, done

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not config.upstream:
            raise ServiceError(503, "no_upstream", "this server has no upstream configured "
                               "(start it with --upstream URL).")
        data, opts = _parse(await request.body(), config)
        try:
            before, after, done = await asyncio.wait_for(compress_messages(data, opts),
                                                         config.request_timeout)
        except TimeoutError:
            raise ServiceError(504, "timeout", f"compressing the messages took longer than "
                               f"{config.request_timeout:g} s.") from None
        service.metrics.add_tokens("chat", before, after)
        ours = {"X-Tokensieve-Tokens-Before": str(before),
                "X-Tokensieve-Tokens-After": str(after),
                "X-Tokensieve-Messages-Compressed": str(done)}
        headers = {"content-type": "application/json"}
        auth = (f"Bearer {config.upstream_api_key}" if config.upstream_api_key
                else None if config.api_key else request.headers.get("authorization"))
        if auth:
            headers["authorization"] = auth
        for name in ("openai-organization", "openai-project"):
            if name in request.headers:
                headers[name] = request.headers[name]
        client = _client(app, config.upstream_timeout)
        upstream = client.build_request("POST", f"{config.upstream}/chat/completions",
                                        content=json.dumps(data).encode(), headers=headers)
        try:
            resp = await client.send(upstream, stream=True)
        except httpx.TimeoutException:
            return error_response(504, "upstream_timeout", "the upstream did not answer in "
                                  "time.", ours)
        except httpx.HTTPError as exc:
            return error_response(502, "upstream_unreachable",
                                  f"could not reach the upstream ({type(exc).__name__}).", ours)
        passed = {k: v for k, v in resp.headers.items() if k.lower() in PASS_HEADERS}
        passed.update(ours)
        if data.get("stream") and resp.status_code == 200:
            async def relay():
                try:
                    async for chunk in resp.aiter_bytes():
                        yield chunk
                finally:
                    await resp.aclose()

            passed.setdefault("cache-control", "no-cache")
            return StreamingResponse(relay(), status_code=resp.status_code, headers=passed)
        try:
            body = await resp.aread()
        finally:
            await resp.aclose()
        return Response(body, status_code=resp.status_code, headers=passed)
