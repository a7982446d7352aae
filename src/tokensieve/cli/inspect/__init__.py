"""``tokensieve inspect <name> ...``: one sub-command per inspector.

Each inspector ``tokensieve.inspect.<name>`` has its command line in ``tokensieve.cli.inspect.
<name>``, which provides ``add_arguments(parser)`` and ``run(args) -> int`` (and optionally
``DESCRIPTION``, a one-line help). A module that is not there (or fails to import, e.g. for a
missing dependency of its inspector) still gets its sub-command, which then says so in one
line."""

from __future__ import annotations

import argparse
import importlib

from ...errors import UsageError
from ...inspect import INSPECTORS

_HELP = {
    "surprise": "per-token surprisal of a text (terminal, HTML, PNG or JSON)",
    "events": "score the events of a sequence (log lines, JSONL) by surprise",
    "vocab": "find under-trained ('glitch') tokens of a model's vocabulary",
    "attribute": "which context words an answer depends on",
}


def _load(name: str):
    """(module, None) or (None, why it is unavailable)."""
    full = f"{__name__}.{name}"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name in (full, f"tokensieve.inspect.{name}"):
            return None, "it is not part of this version of tokensieve"
        return None, f"it needs {exc.name!r}, which is not installed (pip install {exc.name})"
    except Exception as exc:  # a broken inspector must not break every other command
        return None, f"it failed to import ({type(exc).__name__}: {exc})"
    if not (hasattr(module, "add_arguments") and hasattr(module, "run")):
        return None, f"{full} has no add_arguments/run"
    return module, None


def _unavailable(name: str, why: str):
    def run(args: argparse.Namespace) -> int:
        raise UsageError(f"'tokensieve inspect {name}' is not available: {why}.")

    return run


def add(subparsers) -> argparse.ArgumentParser:
    """Add ``inspect`` with one sub-command per inspector to a ``tokensieve`` sub-parser set."""
    parser = subparsers.add_parser(
        "inspect", help="look at which tokens carry information: " + ", ".join(INSPECTORS))
    sub = parser.add_subparsers(dest="inspector", required=True, metavar="INSPECTOR",
                                parser_class=type(parser))
    for name in INSPECTORS:
        module, why = _load(name)
        if module is None:
            # no options of its own (NUL never appears in argv): whatever follows, --help
            # included, is taken as is and answered with the one-line reason
            p = sub.add_parser(name, help=f"{_HELP.get(name, name)} (unavailable: {why})",
                               add_help=False, prefix_chars="\0")
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=_unavailable(name, why))
            continue
        p = sub.add_parser(name, help=getattr(module, "DESCRIPTION", _HELP.get(name, name)),
                           description=getattr(module, "DESCRIPTION", None))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser
