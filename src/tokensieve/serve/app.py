"""The FastAPI application: ``create_app(config)``.

Endpoints: ``POST /v1/compress``, ``POST /v1/score``, ``GET /v1/methods``, ``GET /health``,
``GET /metrics``, the OpenAI-compatible ``POST /v1/chat/completions`` proxy (see :mod:`.proxy`)
and the web page at ``/`` (see :mod:`.page`).

Safety: a ``Host`` header other than the bound host, a loopback name or ``allowed_hosts``
gets 400 (DNS rebinding); a POST whose Content-Type is not JSON gets 415 (a browser's
cross-site "simple" request cannot reach the API); a request body above ``max_body_bytes``
gets 413, and so does text over ``max_chars`` characters; with an API key configured every
path but ``/health`` and the static page (``/``, ``/static/*``) needs
``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (401); user text enters through
:func:`tokensieve.inputs.decode_text` and protect regexes are checked before any work
(:func:`tokensieve.text.protect.check_pattern`) and run under ``pattern_timeout``;
model calls run at most ``max_concurrency`` at once, the rest queue up to ``queue_timeout``
seconds and then get 503 with Retry-After; a model call over ``request_timeout`` gets 504.
Every error is JSON ``{"error": {"type", "message"}}``. No request field names a model,
tokenizer or file: the deployment chooses the model."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BudgetError, InputError, ModelNotFoundError, TokensieveError
from ..inspect.surprise import WordScore
from ..text.protect import MAX_PATTERNS
from ..text.result import ScoredUnit
from .config import ServeConfig
from .errors import ServiceError, check_chars, check_patterns, error_response, user_text
from .metrics import Metrics

log = logging.getLogger("tokensieve.serve")


# ---------------------------------------------------------------- request / response schemas

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompressRequest(_Strict):
    text: str | list[str] = Field(description="the prompt, or a list of documents")
    keep: float | None = Field(None, gt=0, le=1, description="fraction of tokens kept")
    target_tokens: int | None = Field(None, gt=0)
    question: str | None = None
    method: str = "default"
    granularity: str = "auto"
    finest: Literal["sentence", "word"] | None = None
    format: Literal["text", "markdown", "json", "code"] = "text"
    protect: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)
    keep_text: list[str] = Field(default_factory=list, max_length=MAX_PATTERNS)
    keep_numbers: bool = False
    keep_names: bool = False
    allow_over_budget: bool = False
    seed: int = Field(0, ge=0)
    include_scores: bool = True


class ScoreRequest(_Strict):
    text: str
    question: str | None = None
    include_tokens: bool = False


class CompressResponse(BaseModel):
    text: str
    original_tokens: int
    compressed_tokens: int
    target_tokens: int
    kept_fraction: float
    kept_spans: list[list[int]]
    scores: list[ScoredUnit] | None = None
    method: str
    granularity: str
    format: str
    timings: dict[str, float]
    notes: list[str]


class ScoreResponse(BaseModel):
    model: str
    total: float
    mean: float
    perplexity: float
    question: str | None = None
    words: list[WordScore]
    tokens: list[dict[str, Any]] | None = None
    notes: list[str]


# ---------------------------------------------------------------- bounded model calls

class ModelGate:
    """At most ``limit`` model calls at once in a thread pool; a caller waits up to
    ``queue_timeout`` for a slot (then 503) and ``timeout`` for the call (then 504; the slot
    is freed only when the abandoned call really ends)."""

    def __init__(self, limit: int, queue_timeout: float, timeout: float) -> None:
        self.limit, self.queue_timeout, self.timeout = limit, queue_timeout, timeout
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="tokensieve")
        self._sems: dict[int, asyncio.Semaphore] = {}

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._sems.get(id(loop))
        if sem is None:
            sem = self._sems[id(loop)] = asyncio.Semaphore(self.limit)
        return sem

    async def run(self, fn, /, *args, **kwargs):
        sem = self._sem()
        try:
            await asyncio.wait_for(sem.acquire(), self.queue_timeout)
        except TimeoutError:
            retry = max(1, round(self.queue_timeout))
            raise ServiceError(503, "overloaded", "the server is busy; retry shortly.",
                               {"Retry-After": str(retry)}) from None
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            raise ServiceError(504, "timeout", f"the model call took longer than "
                               f"{self.timeout:g} s; send a shorter text.") from None
        finally:  # timed out or cancelled: the slot frees when the call really ends
            if fut.done():
                sem.release()
            else:
                fut.add_done_callback(lambda _f: sem.release())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- ASGI guard

class Guard:
    """Pure ASGI middleware: request size limit, API key, metrics for every response."""

    def __init__(self, app, config: ServeConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}
        path, method = scope.get("path", ""), scope.get("method", "GET")

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        async def reply(response):
            await response(scope, receive, send_wrapped)

        self.metrics.in_flight += 1
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", [])}
            if not self.config.host_allowed(headers.get("host")):
                return await reply(error_response(
                    400, "invalid_host", f"the Host header {headers.get('host')!r} is not one "
                    "this server answers to; add it to TOKENSIEVE_ALLOWED_HOSTS "
                    "(--allowed-hosts)."))
            if self.config.api_key and not _public(path) and not self._authorised(headers):
                return await reply(error_response(
                    401, "unauthorized", "missing or wrong API key (send Authorization: "
                    "Bearer KEY or X-API-Key: KEY).", {"WWW-Authenticate": "Bearer"}))
            if method == "POST" and not _is_json(headers.get("content-type", "")):
                return await reply(error_response(
                    415, "unsupported_media_type", "send the request body as JSON with "
                    "Content-Type: application/json."))
            limit = self.config.max_body_bytes
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    return await reply(error_response(400, "invalid_request",
                                                      "bad Content-Length header."))
                if int(length) > limit:
                    return await reply(self._too_large(limit))
            # read the whole body first (bounded), so that a chunked body over the limit is
            # a 413 too, whatever the endpoint does with it
            chunks, seen, more = [], 0, method in ("POST", "PUT", "PATCH")
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    status["code"] = 499  # the client went away
                    return
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > limit:
                    return await reply(self._too_large(limit))
                more = message.get("more_body", False)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapped)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe(method, path, status["code"], time.perf_counter() - t0)

    def _authorised(self, headers: dict[str, str]) -> bool:
        key = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        return key is not None and hmac.compare_digest(key.encode(), self.config.api_key.encode())

    @staticmethod
    def _too_large(limit: int) -> JSONResponse:
        return error_response(413, "request_too_large",
                              f"the request body is larger than {limit} bytes.")


def _is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _public(path: str) -> bool:
    """Paths open without the API key: the health check and the static page (no data)."""
    return path in ("/health", "/") or path.startswith("/static/")


# ---------------------------------------------------------------- the app

class Service:
    """What the endpoints share: config, metrics, the gate and the compress function."""

    def __init__(self, config: ServeConfig, compress_fn=None, score_fn=None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.gate = ModelGate(config.max_concurrency, config.queue_timeout,
                              config.request_timeout)
        if compress_fn is None:
            from ..text import compress as compress_fn
        if score_fn is None:
            from ..inspect.surprise import surprise as score_fn
        self._compress, self._score = compress_fn, score_fn
        self._counter = None
        self.ready = not config.preload

    def compress_sync(self, text, **options):
        """``compress`` with the deployment's model; the protect regexes run within
        ``pattern_timeout`` over exactly the text compress protects."""
        return self._compress(text, model=self.config.model, device=self.config.device,
                              progress=False, protect_timeout=self.config.pattern_timeout,
                              **options)

    def score_sync(self, text: str, question: str | None):
        return self._score(text, self.config.model, question, device=self.config.device,
                           progress=False)

    def count_tokens(self, text: str) -> int:
        if self._counter is None:
            from ..text.pipeline import make_counter

            self._counter = make_counter(None, self.config.model)
        return int(self._counter.count(text))

    def warm_up(self) -> None:
        sample = ("The service loads its models once at start. " * 30).strip()
        self.compress_sync(sample, keep=0.5)
        self.count_tokens(sample)
        self.ready = True


def _detail_list(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        out.append({"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))})
    return out


def create_app(config: ServeConfig | None = None, *, compress_fn=None, score_fn=None) -> FastAPI:
    """The service. ``compress_fn`` / ``score_fn`` replace :func:`tokensieve.compress` /
    :func:`tokensieve.inspect.surprise` (tests inject slow or failing ones)."""
    config = config or ServeConfig(preload=False)
    service = Service(config, compress_fn, score_fn)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.preload:
            await asyncio.get_running_loop().run_in_executor(None, service.warm_up)
            log.info("tokensieve: models loaded")
        yield
        service.gate.close()
        from .proxy import close_client

        await close_client(app)

    app = FastAPI(title="tokensieve", version=_version(), lifespan=lifespan,
                  description="Prompt compression as a service, and an OpenAI-compatible "
                              "compressing proxy.")
    app.state.service = service
    app.add_middleware(Guard, config=config, metrics=service.metrics)
    if config.any_host():
        log.warning("tokensieve: bound to %s with no TOKENSIEVE_ALLOWED_HOSTS: any Host "
                    "header is accepted (set it against DNS rebinding)", config.host)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        details = _detail_list(exc)
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(400, "invalid_json", "the request body is not valid JSON.",
                                  details=details)
        return error_response(422, "invalid_request", "the request does not match the schema "
                              "(see details).", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(TokensieveError)
    async def _tokensieve(request: Request, exc: TokensieveError):
        if isinstance(exc, BudgetError):
            return error_response(422, "budget", str(exc))
        if isinstance(exc, InputError | ModelNotFoundError):
            return error_response(400, "invalid_input", str(exc))
        return error_response(500, "internal_error", str(exc))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("tokensieve: unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server "
                              "could not handle this request.")

    @app.get("/health")
    async def health():
        return {"status": "ok" if service.ready else "loading", "version": _version(),
                "model": config.model, "upstream": bool(config.upstream)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(service.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/compress", response_model=CompressResponse,
              response_model_exclude_none=True)
    async def compress(req: CompressRequest):
        if req.keep is not None and req.target_tokens is not None:
            raise ServiceError(422, "invalid_request", "give keep or target_tokens, not both.")
        docs = [req.text] if isinstance(req.text, str) else req.text
        for i, doc in enumerate(docs):
            user_text(doc, "text" if isinstance(req.text, str) else f"text[{i}]")
        for i, lit in enumerate(req.keep_text):
            user_text(lit, f"keep_text[{i}]")
        question = user_text(req.question, "question") or ""
        check_chars(config, sum(map(len, docs)) + 2 * (len(docs) - 1) + len(question),
                    "the text and question hold")
        check_patterns(req.protect)
        options = req.model_dump(exclude={"text", "include_scores"})
        result = await service.gate.run(service.compress_sync, req.text, **options)
        service.metrics.add_tokens("compress", result.original_tokens, result.compressed_tokens)
        return result.to_dict(include_scores=req.include_scores)

    @app.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True)
    async def score(req: ScoreRequest):
        user_text(req.text, "text")
        question = user_text(req.question, "question") or ""
        check_chars(config, len(req.text) + len(question), "the text and question hold")
        result = await service.gate.run(service.score_sync, req.text, req.question)
        data = {"model": result.model, "total": result.total, "mean": result.mean,
                "perplexity": result.perplexity, "question": result.question,
                "words": [asdict(w) for w in result.words], "notes": list(result.notes)}
        if req.include_tokens:
            data["tokens"] = [asdict(t) for t in result.tokens]
        return data

    @app.get("/v1/methods")
    async def methods():
        from ..text import FORMATS, GRANULARITIES, METHODS

        return {"methods": list(METHODS), "granularities": list(GRANULARITIES),
                "formats": list(FORMATS), "default_method": "default"}

    from .page import add_page_routes
    from .proxy import add_proxy_routes

    add_proxy_routes(app, service)
    add_page_routes(app)
    return app


@functools.cache
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tokensieve")
    except Exception:  # not installed as a distribution
        return "0"


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()
