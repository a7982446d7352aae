"""VLM methods by name. ``"default"`` is chosen on the dev split (see the README)."""

from __future__ import annotations

from ...engine.spec import build_from_spec
from .attention import VTCCLS, VisionDrop, VisionZip
from .base import Inside, Visual, VLMMethod
from .dart import DART
from .fastv import FastV
from .hiprune import HiPrune
from .learned import Learned
from .mmtok import MMTok
from .probe import Probe
from .recover import Recover
from .simple import RandomTokens, UniformGrid
from .todre import ToDRE
from .transprune import TransPrune
from .zeroth import ZerothOrder

METHODS: dict[str, type[VLMMethod]] = {
    cls.name: cls for cls in (
        # before the LLM
        VisionZip, VTCCLS, HiPrune, DART, ToDRE, ZerothOrder, VisionDrop, MMTok, Recover, Probe,
        Learned,
        # inside it
        FastV, TransPrune,
        # baselines
        RandomTokens, UniformGrid)
}
# chosen on the dev split (benchmarks/results/vlm-dev): the best mean accuracy at keep 0.25 and
# 0.125 among the methods that run on every supported class (visionzip, 1.4 points higher,
# needs a Llava tower's attention; grid, tied, needs a patch grid)
DEFAULT_METHOD = "todre"


def get_method(method: str | VLMMethod) -> VLMMethod:
    """A method instance from a name with optional settings ("dart:pivots=4"), or itself."""
    if isinstance(method, VLMMethod):
        return method
    return build_from_spec(method, METHODS, DEFAULT_METHOD, what="VLM method")


__all__ = ["DEFAULT_METHOD", "METHODS", "Inside", "VLMMethod", "Visual", "get_method"]
