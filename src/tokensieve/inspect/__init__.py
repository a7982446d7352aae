"""Look at which tokens carry information: ``surprise`` (per-token surprisal of a text),
``events`` (informative events of a sequence), ``vocab`` and ``attribute``.

Each inspector is a module ``tokensieve.inspect.<name>`` with a function of the same name
returning a typed result, plus ``add_arguments`` / ``run`` for ``tokensieve inspect <name>``.
``surprise`` and ``events`` are imported here (they import torch and the model only when
called); the others on first use."""

from __future__ import annotations

import importlib
from typing import Any

INSPECTORS = ("surprise", "events", "vocab", "attribute")

from .events import Event, EventsResult, events, parse_events, template  # noqa: E402
from .surprise import SurpriseResult, TokenScore, WordScore, surprise  # noqa: E402

__all__ = ["INSPECTORS", "Event", "EventsResult", "SurpriseResult", "TokenScore", "WordScore",
           "events", "parse_events", "surprise", "template"]


def __getattr__(name: str) -> Any:
    """The inspectors not imported above (``vocab``, ``attribute``), on first use."""
    module = name if name in INSPECTORS else None
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module}":
            raise
        raise AttributeError(f"the {module!r} inspector is not part of this version of "
                             "tokensieve") from None
    value = getattr(mod, name, mod)
    # importing the submodule bound its name to the module; bind the function instead
    globals()[name] = value
    return value
