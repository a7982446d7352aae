"""Settings of one ``tokensieve serve`` deployment: flags, or ``TOKENSIEVE_*`` environment
variables (flags win). Lists are comma-separated, except ``TOKENSIEVE_PROXY_PROTECT``
(regexes contain commas): one pattern per line, or a JSON list."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from ..errors import UsageError


@dataclass
class ServeConfig:
    """Everything a deployment can set. Requests may narrow the proxy settings (``proxy_*``)
    through the ``tokensieve`` field of a chat request, never the model or any path."""

    host: str = "127.0.0.1"
    port: int = 8000
    upstream: str | None = None          # e.g. https://api.openai.com/v1
    upstream_api_key: str | None = None  # sent upstream; unset: the client's Authorization
    #                                      is forwarded, unless api_key (ours) is set
    api_key: str | None = None           # clients must send it (Bearer or X-API-Key)
    max_concurrency: int = 1             # model calls at once; the rest queue
    queue_timeout: float = 5.0           # seconds a request may queue before 503
    request_timeout: float = 60.0        # seconds per model call before 504
    upstream_timeout: float = 300.0      # seconds for the upstream's answer
    max_body_bytes: int = 2_000_000      # larger requests get 413
    pattern_timeout: float = 1.0         # seconds for a request's protect regexes
    max_chars: int = 100_000             # characters of text per request (413 above)
    max_messages: int = 500              # messages per proxy request (413 above)
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides host and loopback
    threads: int = 0                     # torch threads for the models (0: torch's default)
    model: str = "default"               # scoring model (deployment only)
    device: str = "cpu"
    preload: bool = True                 # load the models at start-up
    # proxy defaults
    proxy_roles: tuple[str, ...] = ("system", "user", "tool")
    proxy_min_tokens: int = 512          # compress messages longer than this
    proxy_keep: float = 0.5              # fraction of tokens kept
    proxy_method: str = "default"
    proxy_protect: tuple[str, ...] = ()  # regexes kept byte for byte
    proxy_keep_numbers: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("api_key", "upstream_api_key"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise UsageError(f"{name} is set but empty (TOKENSIEVE_{name.upper()}=\"\"), "
                                 "which would turn it off silently; unset it, or give a key.")
        if self.max_chars < 1 or self.max_messages < 1:
            raise UsageError("max_chars and max_messages must be at least 1.")
        from ..text.protect import check_pattern

        for pat in self.proxy_protect:
            check_pattern(pat)
        self.allowed_hosts = tuple(_host_name(h) for h in self.allowed_hosts if h.strip())
        if self.max_concurrency < 1:
            raise UsageError(f"max_concurrency must be at least 1, got {self.max_concurrency}.")
        if self.max_body_bytes < 1024:
            raise UsageError("max_body_bytes must be at least 1024.")
        if not 0 < self.proxy_keep <= 1:
            raise UsageError(f"proxy_keep must be in (0, 1], got {self.proxy_keep}.")
        if self.upstream is not None:
            self.upstream = self.upstream.rstrip("/")
            if not self.upstream.startswith(("http://", "https://")):
                raise UsageError(f"upstream must be an http(s) URL, got {self.upstream!r}.")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> ServeConfig:
        """``TOKENSIEVE_<FIELD>`` variables (e.g. TOKENSIEVE_API_KEY, TOKENSIEVE_UPSTREAM,
        TOKENSIEVE_PROXY_ROLES=system,user), then ``overrides`` (None means unset)."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"TOKENSIEVE_{f.name.upper()}")
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                elif f.name == "proxy_protect":
                    values[f.name] = _patterns(raw)
                elif isinstance(default, tuple):
                    values[f.name] = tuple(s.strip() for s in raw.split(",") if s.strip())
                else:
                    values[f.name] = raw
            except ValueError:
                raise UsageError(f"TOKENSIEVE_{f.name.upper()}={raw!r} is not a valid "
                                 f"{type(default).__name__}.") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def any_host(self) -> bool:
        """Bound to every interface with no allowed hosts named: the Host is not checked."""
        return "*" in self.allowed_hosts or (
            self.host in ("0.0.0.0", "::", "") and not self.allowed_hosts)

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request's Host header names this server (against DNS rebinding): the
        bound host, a loopback name, or one of ``allowed_hosts``."""
        if self.any_host():
            return True
        if not host:
            return False
        return _host_name(host) in {"localhost", "127.0.0.1", "::1", _host_name(self.host),
                                    *self.allowed_hosts}


def _host_name(host: str) -> str:
    """``Example.COM:8000`` -> ``example.com``; ``[::1]:80`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _patterns(raw: str) -> tuple[str, ...]:
    """TOKENSIEVE_PROXY_PROTECT: a JSON list of regexes, or one regex per line (never split
    on commas, which regexes use: ``ORDER-\\d{4,8}``)."""
    if raw.lstrip().startswith("["):
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"TOKENSIEVE_PROXY_PROTECT looks like a JSON list but is not valid "
                             f"JSON ({exc}); give a JSON list of strings or one regex per "
                             "line.") from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise UsageError("TOKENSIEVE_PROXY_PROTECT must be a JSON list of strings or one "
                             "regex per line.")
        return tuple(x for x in items if x)
    return tuple(line for line in raw.splitlines() if line.strip())
