"""The web page at ``/``: plain HTML, CSS and JavaScript shipped as package data in
``static/`` (no build step, nothing fetched from the web). The page calls the JSON API
(``/v1/methods``, ``/v1/compress``); it holds no data itself, so ``/`` and ``/static/*`` are
open even when the service has an API key (the API calls still need it)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# the page runs only its own script and style; no inline code, no other origin
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page_routes(app: FastAPI) -> None:
    """``GET /`` (index.html) and ``/static/*`` (app.js, style.css)."""

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers=_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
