"""Vision methods by name. ``"default"`` is the best measured one (see the README)."""

from __future__ import annotations

from ...engine.spec import build_from_spec
from .attention import EViT, VisionZip
from .base import Assignment, Step, VisionMethod
from .diversity import DART, ToDRE
from .informed import InformedMerge
from .matching import PiToMe, ToMe
from .simple import GridMethod, RandomMethod, RepresentationShift

METHODS: dict[str, type[VisionMethod]] = {
    cls.name: cls for cls in (InformedMerge, ToMe, EViT, PiToMe, DART, ToDRE, VisionZip,
                              RepresentationShift, RandomMethod, GridMethod)
}
DEFAULT_METHOD = "informed"


def get_method(method: str | VisionMethod) -> VisionMethod:
    """A method instance from a name with optional settings ("dart:pivots=4"), or itself."""
    if isinstance(method, VisionMethod):
        return method
    return build_from_spec(method, METHODS, DEFAULT_METHOD, what="vision method")


__all__ = ["DEFAULT_METHOD", "METHODS", "Assignment", "Step", "VisionMethod", "get_method"]
