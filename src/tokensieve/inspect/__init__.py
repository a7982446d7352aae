"""Look at which tokens carry information: ``surprise`` (per-token surprisal of a text),
``events`` (informative events of a sequence), ``vocab`` and ``attribute``.

Each inspector is a module ``tokensieve.inspect.<name>`` with a function of the same name
returning a typed result; its command line, ``tokensieve inspect <name>``, is
``tokensieve.cli.inspect.<name>`` (the library never imports the CLI).
``surprise`` and ``events`` are imported here (they import torch and the model only when
called); the others on first use."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

INSPECTORS = ("surprise", "events", "vocab", "attribute")

from .events import Event, EventsResult, events, parse_events, template  # noqa: E402
from .surprise import SurpriseResult, TokenScore, WordScore, surprise  # noqa: E402

__all__ = ["INSPECTORS", "Event", "EventsResult", "SurpriseResult", "TokenScore", "WordScore",
           "events", "parse_events", "surprise", "template"]


class _Package(types.ModuleType):
    """Importing a submodule (``tokensieve.inspect.vocab``) binds its name on the package to
    the module, whoever imports it and whenever; the package hands out the function of the
    same name instead, so ``inspect.vocab(...)`` works in any import order. The module itself
    stays in ``sys.modules`` (``importlib.import_module`` returns it)."""

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if isinstance(value, types.ModuleType) and not name.startswith("_"):
            same = getattr(value, name, None)
            if callable(same):
                return same
        return value


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """The inspectors not imported above (``vocab``, ``attribute``, and helpers such as
    ``sticky``), on first use: the function named after its module, else the module."""
    module = name
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (no inspector "
                             "of that name in this version of tokensieve)") from None
    value = getattr(mod, name, mod)
    # importing the submodule bound its name to the module; bind the function instead
    globals()[name] = value
    return value
