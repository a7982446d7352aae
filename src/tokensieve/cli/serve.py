"""``tokensieve serve``: the HTTP service and OpenAI-compatible compressing proxy."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import EXIT_OK

# flags of `tokensieve serve` beyond host / port / upstream / api key: (flag, type, help);
# each sets the ServeConfig field of the same name and overrides its TOKENSIEVE_* variable
SERVE_FLAGS = (
    ("--max-concurrency", int, "model calls at once; the rest queue, then get 503 (default 1)"),
    ("--queue-timeout", float, "seconds a request may wait for a model slot (default 5)"),
    ("--request-timeout", float, "seconds per model call before 504 (default 60)"),
    ("--max-body-bytes", int, "larger requests get 413 (default 2000000)"),
    ("--max-chars", int, "characters of text per request; more get 413 (default 100000)"),
    ("--max-messages", int, "messages per proxy request; more get 413 (default 500)"),
    ("--allowed-hosts", str, "comma-separated Host names served besides --host and loopback"),
    ("--threads", int, "torch threads for the models (default: torch's)"),
    ("--model", str, "scoring model: default, a local HF folder or a cached hub id"),
    ("--device", str, "cpu (default), cuda, cuda:N, mps or auto"),
    ("--proxy-keep", float, "proxy: fraction of tokens kept in long messages (default 0.5)"),
    ("--proxy-min-tokens", int, "proxy: compress messages longer than this (default 512)"),
    ("--proxy-roles", str, "proxy: comma-separated roles compressed (default system,user,tool)"),
    ("--proxy-method", str, "proxy: compression method (default: default)"),
)


def serve_config(args: argparse.Namespace):
    """The deployment's ServeConfig: TOKENSIEVE_* variables, then the flags."""
    from ..serve import ServeConfig

    overrides = {"host": args.host, "port": args.port, "upstream": args.upstream,
                 "api_key": args.api_key}
    for flag, _, _ in SERVE_FLAGS:
        name = flag[2:].replace("-", "_")
        value = getattr(args, name)
        if name in ("proxy_roles", "allowed_hosts") and value is not None:
            value = tuple(r.strip() for r in value.split(",") if r.strip())
        overrides[name] = value
    if args.proxy_keep_numbers:
        overrides["proxy_keep_numbers"] = True
    return ServeConfig.from_env(**overrides)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import run as serve
    except ImportError as exc:
        raise UsageError(f"tokensieve serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'tokensieve[serve]'") from None
    serve(serve_config(args))
    return EXIT_OK


def add(sub) -> None:
    s = sub.add_parser("serve", help="HTTP service and OpenAI-compatible compressing proxy "
                       "(flags override TOKENSIEVE_* environment variables)")
    s.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default 8000)")
    s.add_argument("--upstream", default=None, metavar="URL",
                   help="OpenAI-compatible API the proxy forwards to, e.g. "
                   "https://api.openai.com/v1")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="clients must send this key (Bearer or X-API-Key)")
    for flag, kind, text in SERVE_FLAGS:
        s.add_argument(flag, type=kind, default=None, help=text,
                       metavar={int: "N", float: "X", str: "NAME"}[kind])
    s.add_argument("--proxy-keep-numbers", action="store_true",
                   help="proxy: never cut a number or ID in compressed messages (kept "
                   "whole or dropped whole)")
    s.set_defaults(func=run)
