"""Tiny random-initialised vision-language models of every class ``tokensieve.vlm`` supports,
with inputs built directly (no processor): prompts hold the right number of image tokens in
each model's own layout, pixel values have the shapes the model expects.

``build(kind)`` -> a :class:`Tiny` (model in eval mode, seeded weights); ``tiny.inputs(rows)``
-> the keyword arguments of one forward / generate call, where ``rows`` lists, per batch row,
(images in that row, text tokens before the first image, text tokens after the last one);
rows are left-padded with id 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VOCAB = 160
IMAGE, VSTART, VEND, FAKE, GLOBAL, NEWLINE = 150, 151, 152, 153, 154, 10
ROW_COL = 140               # Idefics3's <row_i_col_j> tokens: 140, 141, ...
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
            initializer_range=0.2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
KINDS = ("llava_clip", "llava_siglip", "llava_dinov2", "llava_next", "idefics3", "smolvlm",
         "qwen2_vl", "qwen2_5_vl")


@dataclass
class Tiny:
    kind: str
    model: torch.nn.Module
    tokens_per_image: int          # visual tokens of one image in the language model
    seed: int = 0
    _g: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(1))

    def _text(self, n: int) -> list[int]:
        return torch.randint(3, 100, (n,), generator=self._g).tolist()

    def image_ids(self, i: int) -> list[int]:
        """The tokens one image occupies in the prompt (its own layout)."""
        n = self.tokens_per_image
        if self.kind.startswith("qwen"):
            return [VSTART] + [IMAGE] * n + [VEND]
        if self.kind in ("idefics3", "smolvlm"):  # 2x2 crops + global view, 16 tokens each
            out = []
            for r in range(2):
                for c in range(2):
                    out += [FAKE, ROW_COL + 2 * r + c] + [IMAGE] * 16
                out.append(NEWLINE)
            return out + [NEWLINE, FAKE, GLOBAL] + [IMAGE] * 16 + [FAKE]
        return [IMAGE] * n

    def pixels(self, n_images: int) -> dict:
        g = torch.Generator().manual_seed(self.seed + 7)
        if self.kind.startswith("llava_") and self.kind != "llava_next":
            return {"pixel_values": torch.randn(n_images, 3, 32, 32, generator=g)}
        if self.kind == "llava_next":
            return {"pixel_values": torch.randn(n_images, 5, 3, 32, 32, generator=g),
                    "image_sizes": torch.tensor([[64, 64]] * n_images)}
        if self.kind.startswith("qwen"):  # 8x8 patches of 4x4 pixels, 2 frames, 3 channels
            return {"pixel_values": torch.randn(n_images * 64, 3 * 2 * 4 * 4, generator=g),
                    "image_grid_thw": torch.tensor([[1, 8, 8]] * n_images)}
        raise ValueError(self.kind)

    def inputs(self, rows: list[tuple[int, int, int]]) -> dict:
        """Inputs of a batch: per row (images, text before, text after)."""
        seqs, count = [], 0
        for images, before, after in rows:
            ids = [1] + self._text(before)
            for i in range(images):
                ids += self.image_ids(count + i) + self._text(2)
            seqs.append(ids + self._text(after))
            count += images
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self.kind in ("idefics3", "smolvlm"):
            g = torch.Generator().manual_seed(self.seed + 7)
            most = max(r[0] for r in rows) * 5
            pix = torch.zeros(len(rows), most, 3, 64, 64)
            for r, (images, _, _) in enumerate(rows):
                pix[r, :images * 5] = torch.randn(images * 5, 3, 64, 64, generator=g)
            out["pixel_values"] = pix
        else:
            out.update(self.pixels(count))
        return out

    def row(self, inputs: dict, r: int) -> dict:
        """Row ``r`` of a batch alone, without its padding, with only its images."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        per_row = [int((ids[i] == IMAGE).sum()) // self.tokens_per_image
                   for i in range(ids.shape[0])]
        first, n = sum(per_row[:r]), per_row[r]
        out = {"input_ids": ids[r:r + 1, mask[r].bool()]}
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        if self.kind in ("idefics3", "smolvlm"):
            out["pixel_values"] = inputs["pixel_values"][r:r + 1, :n * 5]
        elif self.kind.startswith("qwen"):
            out["pixel_values"] = inputs["pixel_values"][first * 64:(first + n) * 64]
            out["image_grid_thw"] = inputs["image_grid_thw"][first:first + n]
        else:
            out["pixel_values"] = inputs["pixel_values"][first:first + n]
            if "image_sizes" in inputs:
                out["image_sizes"] = inputs["image_sizes"][first:first + n]
        return out


def language_model(model) -> torch.nn.Module:
    """The decoder the visual tokens enter."""
    core = model.model
    return core.language_model if hasattr(core, "language_model") else core.text_model


def dropped(inputs: dict, records) -> torch.Tensor:
    """(B, L) True at the image tokens a pruned prefill dropped (from ``r.last``)."""
    ids = inputs["input_ids"]
    where = (ids == IMAGE).nonzero()
    out = torch.zeros_like(ids, dtype=torch.bool)
    at = 0
    for rec in records:
        pos = where[at:at + rec.tokens]
        at += rec.tokens
        keep = torch.zeros(rec.tokens, dtype=torch.bool)
        keep[rec.kept] = True
        out[pos[~keep, 0], pos[~keep, 1]] = True
    return out


def masked_twin(model, inputs: dict, drop: torch.Tensor) -> dict:
    """The oracle of pruning: the same inputs with the dropped tokens masked out (not
    removed) and the position ids the unpruned ``generate`` would use."""
    positions = model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))
    out = dict(inputs, position_ids=positions)
    out["attention_mask"] = inputs["attention_mask"] * (~drop)
    return out


def _llava(vision_kind: str):
    import transformers as tf

    common = dict(VISION, image_size=32, patch_size=8)
    if vision_kind == "clip":
        vision, strategy = tf.CLIPVisionConfig(**common), "default"
    elif vision_kind == "siglip":
        vision, strategy = tf.SiglipVisionConfig(**common), "full"
    else:
        vision, strategy = tf.Dinov2Config(**common, layerscale_value=0.5), "default"
    cfg = tf.LlavaConfig(vision_config=vision, text_config=tf.LlamaConfig(**TEXT),
                         image_token_index=IMAGE, vision_feature_layer=-2,
                         vision_feature_select_strategy=strategy, image_seq_length=16)
    return tf.LlavaForConditionalGeneration(cfg), 16


def _llava_next():
    import transformers as tf

    cfg = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=tf.LlamaConfig(**TEXT), image_token_index=IMAGE, vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=[[32, 64], [64, 64]])
    model = tf.LlavaNextForConditionalGeneration(cfg)
    # base view 4x4 + 2x2 crops of 4x4 each (8x8) with a newline per row: 16 + 8 * 9
    return model, 16 + 8 * 9


def _idefics3(smol: bool = False):
    import transformers as tf

    if smol:
        cfg = tf.SmolVLMConfig(
            vision_config=tf.SmolVLMVisionConfig(**VISION, image_size=64, patch_size=8),
            text_config=tf.LlamaConfig(**TEXT), image_token_id=IMAGE, scale_factor=2)
        return tf.SmolVLMForConditionalGeneration(cfg), 80
    cfg = tf.Idefics3Config(
        vision_config=tf.Idefics3VisionConfig(**VISION, image_size=64, patch_size=8),
        text_config=tf.LlamaConfig(**TEXT), image_token_id=IMAGE, scale_factor=2)
    return tf.Idefics3ForConditionalGeneration(cfg), 80


def _qwen(version: str):
    import transformers as tf

    text = dict(TEXT, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                       "rope_theta": 10000.0})
    text.pop("tie_word_embeddings")
    ids = dict(image_token_id=IMAGE, video_token_id=155, vision_start_token_id=VSTART,
               vision_end_token_id=VEND, tie_word_embeddings=False)
    if version == "2":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                      patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
        cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        return tf.Qwen2VLForConditionalGeneration(cfg), 16
    vision = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64,
                  num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=16, fullatt_block_indexes=[1])
    cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return tf.Qwen2_5_VLForConditionalGeneration(cfg), 16


_CACHE: dict = {}


def build(kind: str, attn: str = "sdpa") -> Tiny:
    """A seeded tiny model of ``kind`` (one of :data:`KINDS`), cached per process."""
    key = (kind, attn)
    if key not in _CACHE:
        torch.manual_seed(0)
        if kind.startswith("llava_") and kind != "llava_next":
            model, n = _llava(kind.split("_")[1])
        elif kind == "llava_next":
            model, n = _llava_next()
        elif kind in ("idefics3", "smolvlm"):
            model, n = _idefics3(kind == "smolvlm")
        elif kind == "qwen2_vl":
            model, n = _qwen("2")
        elif kind == "qwen2_5_vl":
            model, n = _qwen("2.5")
        else:
            raise ValueError(kind)
        model.set_attn_implementation(attn)
        _CACHE[key] = Tiny(kind, model.eval(), n)
    return _CACHE[key]
