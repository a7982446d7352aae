"""VLM methods by name. ``"default"`` is chosen on the dev split (see the README)."""

from __future__ import annotations

from ...engine.spec import build_from_spec
from .attention import VTCCLS, VisionDrop, VisionZip
from .base import Inside, Visual, VLMMethod
from .hiprune import HiPrune
from .simple import RandomTokens, UniformGrid
from .zeroth import ZerothOrder

METHODS: dict[str, type[VLMMethod]] = {
    cls.name: cls for cls in (RandomTokens, UniformGrid)
}
METHODS.update({cls.name: cls for cls in (VisionZip, VTCCLS, HiPrune, VisionDrop, ZerothOrder)})
DEFAULT_METHOD = "random"   # replaced by the dev split's winner


def get_method(method: str | VLMMethod) -> VLMMethod:
    """A method instance from a name with optional settings ("dart:pivots=4"), or itself."""
    if isinstance(method, VLMMethod):
        return method
    return build_from_spec(method, METHODS, DEFAULT_METHOD, what="VLM method")


__all__ = ["DEFAULT_METHOD", "METHODS", "Inside", "VLMMethod", "Visual", "get_method"]
