"""The one check of user text shared by every place: bytes decoded as UTF-8, no NUL (binary)
and no unpaired surrogate, each refused with a one-line :class:`InputError`."""

from __future__ import annotations

from typing import Any

from .errors import InputError


def decode_text(text: Any, what: str = "input") -> Any:
    """``text`` as a str when it is bytes or a str (checked); anything else comes back as it
    is, for the caller's own type check. ``what`` names the text in the messages."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{what} is not valid UTF-8 (byte {exc.start}); "
                             "convert it to UTF-8 text first.") from None
    if not isinstance(text, str):
        return text
    if "\x00" in text:
        raise InputError(f"{what} contains NUL bytes, so it looks binary; pass UTF-8 text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid UTF-8 (unpaired surrogate at character "
                         f"{exc.start}); convert it to UTF-8 text first.") from None
    return text
