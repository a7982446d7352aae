"""Observe a vision tower's attention during one call: per layer, the head-mean attention
probabilities among its tokens, read through ``tokensieve.vision``'s attention taps (the
tower keeps its own attention implementation; SDPA stays SDPA)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .. import vision


def _probs(q: torch.Tensor, k: torch.Tensor, mask, scaling: float) -> torch.Tensor:
    """(B, T, T) head-mean softmax attention of q, k (B, H, T, D), in float32."""
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    return torch.softmax(logits, dim=-1).mean(1)


def feature_layers(feature_layer, n_layers: int) -> int:
    """How many tower layers feed the hidden states a VLM selects (``hidden_states[i]`` is
    the output after i layers; a list selects several)."""
    picks = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return max(i if i >= 0 else n_layers + 1 + i for i in picks)


@contextmanager
def attention_of(tower: torch.nn.Module, feature_layer):
    """Within the block, the tower layers that feed ``feature_layer`` (a VLM's
    ``vision_feature_layer``) record their attention of the last call into the yielded
    dict: layer index -> (B, T, T)."""
    family = vision.detect(tower)
    layers = feature_layers(feature_layer, len(family.layers))
    seen: dict[int, torch.Tensor] = {}
    undo = []

    def tap_for(i: int):
        def tap(module, q, k, v, mask, scaling):
            seen[i] = _probs(q, k, mask, scaling)
            return mask
        return tap

    try:
        for i, module in enumerate(family.attention[:layers]):
            undo.append(vision.install_tap(family, module, tap_for(i)))
        yield seen
    finally:
        for u in reversed(undo):
            u()


def has_cls(tower: torch.nn.Module) -> bool:
    """Whether the tower's first token is a [CLS] token (SigLIP has none)."""
    return vision.detect(tower).name not in ("siglip_vision_model",)
