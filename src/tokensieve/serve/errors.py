"""What the app and the proxy share, below both: the service's one error answer (JSON
``{"error": {"type", "message"}}``, :class:`ServiceError` carrying its status) and the checks
of a request's text and protect patterns that raise it, before any model work."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ..inputs import decode_text
from ..text.protect import check_pattern
from .config import ServeConfig


class ServiceError(Exception):
    """An error with an HTTP status and extra headers, rendered as JSON."""

    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None,
                   details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def user_text(value, what: str):
    """A text field of a request, checked (:func:`tokensieve.inputs.decode_text`: no lone
    surrogate, no NUL); a problem is an :class:`InputError` (400)."""
    return decode_text(value, what)


def check_chars(config: ServeConfig, chars: int, what: str) -> None:
    """413 when a request's text is over ``max_chars`` (checked before any model work)."""
    if chars > config.max_chars:
        raise ServiceError(413, "text_too_long", f"{what} {chars:,} characters, over this "
                           f"server's limit of {config.max_chars:,}; send less text, or raise "
                           "the limit with TOKENSIEVE_MAX_CHARS (--max-chars).")


def check_patterns(patterns) -> None:
    """Every protect regex bounded (length, repeats) and compilable, before any work."""
    for pat in patterns:
        check_pattern(pat)
