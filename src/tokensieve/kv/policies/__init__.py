"""KV-cache policies by name. ``"default"`` is the best measured one (benchmarks/README.md)."""

from __future__ import annotations

from ...engine.spec import build_from_spec
from ...errors import UsageError
from .adaptive import AdaKV, ChunkKV, GlobalPool, PyramidKV
from .attention_based import H2O, TOVA, VATP, SnapKV
from .base import Policy
from .information import Information
from .reconstruct import Reconstruct
from .simple import KeyNorm, RandomPolicy, StreamingLLM

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (StreamingLLM, H2O, SnapKV, TOVA, KeyNorm, VATP, ChunkKV,
                              PyramidKV, GlobalPool, AdaKV, Information, Reconstruct,
                              RandomPolicy)
}
DEFAULT_POLICY = "information"


def get_policy(policy: str | Policy) -> Policy:
    """A policy instance from a name, optionally with settings ("snapkv:window=64,kernel=5"),
    or the instance itself."""
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str):
        raise UsageError(f"policy must be a name such as 'default' or 'snapkv', got {policy!r}.")
    return build_from_spec(policy, POLICIES, DEFAULT_POLICY, what="KV policy")


__all__ = ["DEFAULT_POLICY", "POLICIES", "Policy", "get_policy"]
