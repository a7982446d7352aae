"""VLM methods by name. ``"default"`` is chosen on the dev split (see the README)."""

from __future__ import annotations

from ...engine.spec import build_from_spec, parse_spec
from ...errors import UsageError
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
# chosen on the dev split (benchmarks/results/vlm-dev-learned; before it vlm-dev, todre): the
# best mean accuracy at keep 0.25 and 0.125. Its look head fits the project's small VLM only,
# so "default" runs DEFAULT_FALLBACK wherever the head does not fit or there is no question
# (todre: the best of the methods that run on every supported class).
DEFAULT_METHOD = "learned"
DEFAULT_FALLBACK = "todre"


def get_method(method: str | VLMMethod) -> VLMMethod:
    """A method instance from a name with optional settings ("dart:pivots=4"), or itself.
    ``"default"``: ``learned`` with ``fallback=todre`` (settings apply to ``learned``)."""
    if isinstance(method, VLMMethod):
        return method
    name, kwargs = parse_spec(method, what="VLM method")
    if name not in ("default", "learned"):
        return build_from_spec(method, METHODS, DEFAULT_METHOD, what="VLM method")
    if name == "default":
        kwargs.setdefault("fallback", DEFAULT_FALLBACK)
    fallback = kwargs.get("fallback")
    if isinstance(fallback, str) and fallback.lower() != "none":
        if parse_spec(fallback, what="VLM method")[0] in ("default", "learned"):
            raise UsageError(f"learned: fallback names another VLM method, got {fallback!r}.")
        kwargs["fallback"] = get_method(fallback)
    elif isinstance(fallback, str):
        kwargs["fallback"] = None          # "none": refuse where the head does not fit
    try:
        return Learned(**kwargs)
    except TypeError as exc:
        raise UsageError(f"bad settings for VLM method {name!r} (learned): {exc}") from None


__all__ = ["DEFAULT_FALLBACK", "DEFAULT_METHOD", "METHODS", "Inside", "VLMMethod", "Visual",
           "get_method"]
