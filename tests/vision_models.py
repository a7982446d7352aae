"""Tiny random-initialised vision encoders of every supported Hugging Face family."""

from __future__ import annotations

import torch

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)


def build(family: str, attn: str = "sdpa", image_size: int = 32, patch: int = 8):
    """(model, prefix tokens) in eval mode, seeded weights."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(SMALL, image_size=image_size, patch_size=patch, attn_implementation=attn)
    if family == "vit":
        model, prefix = tf.ViTModel(tf.ViTConfig(**common), add_pooling_layer=False), 1
    elif family == "deit":
        model, prefix = tf.DeiTModel(tf.DeiTConfig(**common), add_pooling_layer=False), 2
    elif family == "dinov2":  # LayerScale
        model, prefix = tf.Dinov2Model(tf.Dinov2Config(**common, layerscale_value=0.5)), 1
    elif family == "dinov2_registers":
        cfg = tf.Dinov2WithRegistersConfig(**common, num_register_tokens=4, layerscale_value=0.5)
        model, prefix = tf.Dinov2WithRegistersModel(cfg), 5
    elif family == "clip":
        model, prefix = tf.CLIPVisionModel(tf.CLIPVisionConfig(**common)), 1
    elif family == "siglip":  # no CLS token
        model, prefix = tf.SiglipVisionModel(tf.SiglipVisionConfig(**common)), 0
    else:
        raise ValueError(family)
    return model.eval(), prefix


FAMILIES = ("vit", "deit", "dinov2", "dinov2_registers", "clip", "siglip")


def tokens(model, pixels) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state


def encoder_output(model, pixels) -> torch.Tensor:
    """The last block's output (before any final norm), captured with a hook."""
    core = next(m for m in model.modules() if hasattr(m, "encoder") and hasattr(m, "embeddings"))
    seen = []
    handle = core.encoder.register_forward_hook(
        lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else
                                           getattr(out, "last_hidden_state", out)))
    try:
        tokens(model, pixels)
    finally:
        handle.remove()
    return seen[-1]
