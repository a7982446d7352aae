"""Where a vision transformer keeps its blocks, its attention and its prefix tokens.

Supported: Hugging Face ViT, DeiT, DINOv2 (with or without registers), CLIP-vision and
SigLIP-vision encoders (alone or inside their full / classification models), and timm
``VisionTransformer``. A :class:`Family` names the modules the reducer hooks:

- ``embed``: the module that sees the image (a pre-hook reads its height and width);
- ``layers``: the transformer blocks in order (forward hooks reduce their outputs);
- ``attention``: per block, the module whose attention is *tapped*: the tap sees the
  block's queries, keys and values as the model computed them (q/k-norm included), adds
  the merged-token size bias (proportional attention) and hands the attention on to the
  model's own implementation (SDPA stays SDPA).

Prefix tokens (CLS, registers, distillation) are counted at run time: tokens entering the
first block minus patches in the image grid, so any image size works.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError

HF_VISION_TYPES = {
    "vit", "deit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model",
}
TAP_NAME = "tokensieve_vision_tap"


@dataclass
class Family:
    name: str
    embed: nn.Module
    layers: list[nn.Module]
    attention: list[nn.Module]
    patch_size: int
    kind: str  # "hf" or "timm"


def _size(p) -> int:
    if isinstance(p, (tuple, list)):
        if len(set(p)) != 1:
            raise UsageError(f"non-square patches {tuple(p)} are not supported yet.")
        return int(p[0])
    return int(p)


def _hf_core(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        config = getattr(module, "config", None)
        if (getattr(config, "model_type", None) in HF_VISION_TYPES
                and hasattr(module, "embeddings") and hasattr(module, "encoder")):
            return module
    return None


def _hf_attention(layer: nn.Module) -> nn.Module:
    for module in layer.modules():
        if hasattr(module, "config") and (hasattr(module, "query") or hasattr(module, "q_proj")):
            return module
    raise UsageError(f"no attention module found in {type(layer).__name__}.")


def _is_timm_vit(model: nn.Module) -> bool:
    return (hasattr(model, "blocks") and hasattr(model, "patch_embed")
            and hasattr(model, "num_prefix_tokens"))


def detect(model: nn.Module) -> Family:
    """The :class:`Family` of ``model``, or a :class:`UsageError` naming what is supported."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"vision.reduce needs a torch model, got {type(model).__name__}.")
    core = _hf_core(model)
    if core is not None:
        encoder = core.encoder
        layers = list(getattr(encoder, "layer", None) or getattr(encoder, "layers", []))
        if not layers:
            raise UsageError(f"{type(core).__name__} has no encoder layers.")
        return Family(core.config.model_type, core.embeddings, layers,
                      [_hf_attention(layer) for layer in layers],
                      _size(core.config.patch_size), "hf")
    if _is_timm_vit(model):
        blocks = list(model.blocks)
        if not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
            raise UsageError("this timm model's blocks have no standard Attention (attn.qkv).")
        return Family("timm", model.patch_embed, blocks, [b.attn for b in blocks],
                      _size(model.patch_embed.patch_size), "timm")
    raise UsageError(
        f"unsupported model type {type(model).__name__}: vision.reduce works on Hugging Face "
        "ViT, DeiT, DINOv2, CLIP-vision and SigLIP-vision encoders and timm VisionTransformer."
    )


# --------------------------------------------------------------------------- attention taps
#
# A tap is called with (module, q, k, v, mask, scaling) before the attention itself and
# returns the mask to use; q, k, v are (B, H, N, D).

Tap = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None",
                float], "torch.Tensor | None"]


def _hf_eager(module: nn.Module):
    return sys.modules[type(module).__module__].eager_attention_forward


def _hf_tapped_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    tap, inner = module.__dict__["_tokensieve_tap"]
    s = query.size(-1) ** -0.5 if scaling is None else scaling
    attention_mask = tap(module, query, key, value, attention_mask, s)
    return inner(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def _register_hf_tap() -> None:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if TAP_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(TAP_NAME, _hf_tapped_attention)


def _timm_additive(n: int, like: torch.Tensor, mask, is_causal: bool):
    """The additive bias timm's eager path builds from ``attn_mask`` / ``is_causal``."""
    if is_causal:
        return like.new_full((n, n), float("-inf")).triu_(1)
    if mask is not None and mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=like.dtype).masked_fill_(~mask, float("-inf"))
    return mask


def _timm_tapped_forward(self, x, attn_mask=None, is_causal=False):
    """timm's ``Attention.forward`` (timm 1.0.x: output gate, ``is_causal``, bool masks) with a
    tap before the attention: the same operations in the same order, so with a tap that
    leaves the mask alone it is bit-identical on both the fused and the eager path."""
    tap = self.__dict__["_tokensieve_tap"][0]
    b, n, c = x.shape
    gate = getattr(self, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    given = attn_mask
    if is_causal or (attn_mask is not None and attn_mask.dtype == torch.bool):
        given = _timm_additive(n, q, attn_mask, is_causal)  # the tap adds to a float bias
    tapped = tap(self, q, k, v, given, self.scale)
    if tapped is not given:  # the tap changed the mask: it now carries the causal part too
        attn_mask, is_causal = tapped, False
    if getattr(self, "fused_attn", True):
        x = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal)
    else:
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        bias = _timm_additive(n, attn, attn_mask, is_causal)
        if bias is not None:
            attn = attn + bias
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = attn @ v
    x = x.transpose(1, 2).reshape(b, n, -1)
    x = getattr(self, "norm", nn.Identity())(x)
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def _timm_standard(module: nn.Module) -> bool:
    """Whether ``module`` runs timm's standard ``Attention.forward`` (the one re-implemented
    above); DiffAttention and other attention layers with a ``qkv`` do not."""
    forward = getattr(type(module), "forward", None)
    return (getattr(forward, "__qualname__", "") == "Attention.forward"
            and getattr(forward, "__module__", "").startswith("timm."))


def install_tap(family: Family, module: nn.Module, tap: Tap) -> Callable[[], None]:
    """Route ``module``'s attention through ``tap``; returns the function that undoes it.
    Only this module instance changes (its own config copy or its own forward)."""
    if "_tokensieve_tap" in module.__dict__:
        raise UsageError("this model is already patched by tokensieve.vision; "
                         "leave the other reduce() block (or call remove()) first.")
    if family.kind == "hf":
        _register_hf_tap()
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        config = module.config
        impl = config._attn_implementation
        inner = (_hf_eager(module) if impl in (None, "eager")
                 else ALL_ATTENTION_FUNCTIONS[impl])
        own = copy.copy(config)
        own._attn_implementation_internal = TAP_NAME
        module.__dict__["_tokensieve_tap"] = (tap, inner)
        module.config = own

        def undo() -> None:
            module.config = config
            module.__dict__.pop("_tokensieve_tap", None)
        return undo
    if not _timm_standard(module):
        raise UsageError(
            f"{type(module).__name__} is not timm's standard Attention: methods that read the "
            "attention (keys, CLS attention) or weigh merged tokens (proportional attention) "
            "are not supported on it; use 'random', 'grid' or 'repshift' (proportional=False).")
    module.__dict__["_tokensieve_tap"] = (tap, None)
    module.forward = _timm_tapped_forward.__get__(module)

    def undo_timm() -> None:
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_tokensieve_tap", None)
    return undo_timm
