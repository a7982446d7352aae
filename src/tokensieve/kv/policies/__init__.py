"""KV-cache policies by name. ``"default"`` is the best measured one (benchmarks/README.md)."""

from __future__ import annotations

from ...errors import UsageError
from .adaptive import AdaKV, ChunkKV, GlobalPool, PyramidKV
from .attention_based import H2O, TOVA, VATP, SnapKV
from .base import Policy
from .simple import KeyNorm, RandomPolicy, StreamingLLM

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (StreamingLLM, H2O, SnapKV, TOVA, KeyNorm, VATP, ChunkKV,
                              PyramidKV, GlobalPool, AdaKV, RandomPolicy)
}
DEFAULT_POLICY = "tova"


def get_policy(policy: str | Policy) -> Policy:
    """A policy instance from a name (or the instance itself)."""
    if isinstance(policy, Policy):
        return policy
    name = DEFAULT_POLICY if policy == "default" else policy
    if not isinstance(name, str) or name not in POLICIES:
        raise UsageError(
            f"unknown KV policy {policy!r}; choose one of: default, {', '.join(POLICIES)}."
        )
    return POLICIES[name]()


__all__ = ["DEFAULT_POLICY", "POLICIES", "Policy", "get_policy"]
