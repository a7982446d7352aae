"""VLM methods by name. ``"default"`` is chosen on the dev split (see the README)."""

from __future__ import annotations

from ...engine.spec import build_from_spec
from .base import Inside, Visual, VLMMethod
from .dart import DART
from .fastv import FastV
from .mmtok import MMTok
from .recover import Recover
from .simple import RandomTokens, UniformGrid
from .todre import ToDRE
from .transprune import TransPrune

METHODS: dict[str, type[VLMMethod]] = {
    cls.name: cls for cls in (RandomTokens, UniformGrid)
}
METHODS.update({cls.name: cls for cls in (DART, ToDRE, MMTok, Recover)})  # before the LLM
METHODS.update({cls.name: cls for cls in (FastV, TransPrune)})           # inside it
DEFAULT_METHOD = "random"   # replaced by the dev split's winner


def get_method(method: str | VLMMethod) -> VLMMethod:
    """A method instance from a name with optional settings ("dart:pivots=4"), or itself."""
    if isinstance(method, VLMMethod):
        return method
    return build_from_spec(method, METHODS, DEFAULT_METHOD, what="VLM method")


__all__ = ["DEFAULT_METHOD", "METHODS", "Inside", "VLMMethod", "Visual", "get_method"]
