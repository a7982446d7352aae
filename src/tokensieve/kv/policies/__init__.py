"""KV-cache policies by name. ``"default"`` is the best measured one (benchmarks/README.md)."""

from __future__ import annotations

from ...errors import UsageError
from .adaptive import AdaKV, ChunkKV, GlobalPool, PyramidKV
from .attention_based import H2O, TOVA, VATP, SnapKV
from .base import Policy
from .information import Information
from .simple import KeyNorm, RandomPolicy, StreamingLLM

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (StreamingLLM, H2O, SnapKV, TOVA, KeyNorm, VATP, ChunkKV,
                              PyramidKV, GlobalPool, AdaKV, Information, RandomPolicy)
}
DEFAULT_POLICY = "information"


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def get_policy(policy: str | Policy) -> Policy:
    """A policy instance from a name, optionally with settings ("snapkv:window=64,kernel=5"),
    or the instance itself."""
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str):
        raise UsageError(f"policy must be a name such as 'default' or 'snapkv', got {policy!r}.")
    name, _, settings = policy.partition(":")
    name = DEFAULT_POLICY if name == "default" else name
    if name not in POLICIES:
        raise UsageError(
            f"unknown KV policy {policy!r}; choose one of: default, {', '.join(POLICIES)}."
        )
    kwargs = {}
    for item in filter(None, settings.split(",")):
        key, eq, val = item.partition("=")
        if not eq:
            raise UsageError(f"policy settings are key=value pairs, got {item!r} in {policy!r}.")
        kwargs[key.strip()] = _value(val.strip())
    try:
        return POLICIES[name](**kwargs)
    except TypeError as exc:
        raise UsageError(f"bad settings for KV policy {name!r}: {exc}") from None


__all__ = ["DEFAULT_POLICY", "POLICIES", "Policy", "get_policy"]
