"""What the pruner needs to know about each supported VLM class: which forward arguments
carry the image, how to get each image's visual tokens in the language model's space (with
the model's own ``get_image_features``) together with their patch grid, the projector and
the vision tower's features and attention where the class has them, and the position ids
the unpruned model would use (Qwen2-VL: 3-D M-RoPE positions and ``rope_deltas``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .sequence import Kept
from .towers import attention_of, has_cls


@dataclass
class ImageTokens:
    """One image's visual tokens as the language model receives them (see ``Visual``)."""

    features: torch.Tensor
    grid: tuple[int, int] | None = None
    vision: torch.Tensor | None = None
    attention: list[torch.Tensor] | None = None
    cls_attention: list[torch.Tensor] | None = None


class Adapter:
    """One VLM class. ``image_kwargs``: forward arguments that carry the image (cleared for
    the pruned call); ``provides``: optional ``Visual`` fields it can fill."""

    image_kwargs: tuple[str, ...] = ("pixel_values",)
    provides: frozenset[str] = frozenset({"text", "probe"})

    def __init__(self, model):
        self.model = model
        self.core = model.model if hasattr(model, "model") else model

    @property
    def image_token_id(self) -> int:
        return int(self.core.config.image_token_id)

    @property
    def project(self):
        """The projector as a (M, Dv) -> (M, D) callable, when it maps tokens one to one."""
        return None

    def images(self, kw: dict, ids: torch.Tensor, needs: frozenset[str]) -> list[ImageTokens]:
        raise NotImplementedError

    def positions(self, kw: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The position ids of the unpruned prefill: the ones given, else what the language
        model derives from ``cache_position`` (B, L)."""
        if kw.get("position_ids") is not None:
            return kw["position_ids"]
        b, length = ids.shape
        cache_position = kw.get("cache_position")
        if cache_position is None:
            cache_position = torch.arange(length, device=ids.device)
        return cache_position[None, :].expand(b, -1)

    def decode_positions(self, cache_position: torch.Tensor, kept: Kept,
                         past: int) -> torch.Tensor:
        """Position ids of a decode call that brought none, as the unpruned model numbers
        them: the language model counts by ``cache_position`` (original numbering)."""
        return cache_position[None, :].expand(kept.idx.shape[0], -1)


class Llava(Adapter):
    """LlavaForConditionalGeneration (CLIP, SigLIP, DINOv2 towers): one token per patch."""

    image_kwargs = ("pixel_values", "vision_feature_layer", "vision_feature_select_strategy",
                    "image_sizes")

    def __init__(self, model):
        super().__init__(model)
        try:
            self.cls = has_cls(self.core.vision_tower)
        except UsageError:
            self.cls = None  # a tower tokensieve.vision does not know: no attention
        extra = {"attention"} | ({"cls_attention"} if self.cls else set())
        self.provides = frozenset({"text", "probe", "grid", "vision", "project"}
                                  | (extra if self.cls is not None else set()))

    @property
    def project(self):
        return self.core.multi_modal_projector

    def images(self, kw, ids, needs):
        cfg = self.core.config
        layer = kw.get("vision_feature_layer")
        layer = cfg.vision_feature_layer if layer is None else layer
        strategy = kw.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy
        pixels = kw["pixel_values"]
        looks = bool(needs & {"attention", "cls_attention"})
        tower = self.core.vision_tower
        captured: list[torch.Tensor] = []
        hook = None
        if "vision" in needs:
            hook = self.core.multi_modal_projector.register_forward_pre_hook(
                lambda mod, args: captured.append(args[0]))
        watch = attention_of(tower, layer) if looks else contextlib.nullcontext({})
        try:
            with watch as seen:
                feats = self.core.get_image_features(
                    pixel_values=pixels, vision_feature_layer=layer,
                    vision_feature_select_strategy=strategy, image_sizes=kw.get("image_sizes"),
                    return_dict=True).pooler_output
        finally:
            if hook is not None:
                hook.remove()
        patch = cfg.vision_config.patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        drop = 1 if strategy == "default" else 0
        out = []
        for k, f in enumerate(feats):
            n = f.shape[0]
            item = ImageTokens(f, grid if grid[0] * grid[1] == n else None)
            if captured and captured[0].shape[0] == len(feats) and captured[0].shape[1] == n:
                item.vision = captured[0][k]
            if seen and all(a.shape[0] == len(feats) and a.shape[-1] - drop == n
                            for a in seen.values()):
                att = [seen[i][k] for i in sorted(seen)]
                item.attention = [a[drop:, drop:] for a in att]
                item.cls_attention = [a[0, drop:] for a in att] if self.cls else None
            out.append(item)
        return out


class LlavaNext(Adapter):
    """LlavaNextForConditionalGeneration: a base view plus high-resolution crops, unpadded,
    with a newline token after each row (not a raster grid)."""

    image_kwargs = ("pixel_values", "image_sizes", "vision_feature_layer",
                    "vision_feature_select_strategy")

    def images(self, kw, ids, needs):
        cfg = self.core.config
        layer = kw.get("vision_feature_layer")
        feats = self.core.get_image_features(
            kw["pixel_values"], kw["image_sizes"],
            vision_feature_layer=cfg.vision_feature_layer if layer is None else layer,
            vision_feature_select_strategy=(kw.get("vision_feature_select_strategy")
                                            or cfg.vision_feature_select_strategy),
            return_dict=True).pooler_output
        return [ImageTokens(f) for f in feats]


def crop_groups(ids: torch.Tensor, image_id: int, crops: int, size: int) -> list[int]:
    """How many of Idefics3's crops (``size`` image tokens each, in sequence order) belong
    to each image. An image's last crop is its global view, whose image tokens follow the
    same marker token (``<global-img>``) in every image; the last crop of each row is one."""
    marks = (ids == image_id).cpu()
    starts: list[tuple[int, int]] = []    # (row, token before the crop or -1)
    last_marker = set()
    for r in range(ids.shape[0]):
        pos = marks[r].nonzero().flatten().tolist()
        runs: list[list[int]] = []
        for p in pos:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + 1
            else:
                runs.append([p, p + 1])
        for a, b in runs:
            if (b - a) % size:
                raise UsageError(f"a run of {b - a} image tokens is not a whole number of "
                                 f"Idefics3 crops of {size} tokens; check the prompt.")
            before = int(ids[r, a - 1]) if a > 0 else -1
            starts += [(r, before)] + [(r, image_id)] * ((b - a) // size - 1)
        if runs and runs[-1][0] > 0:
            last_marker.add(int(ids[r, runs[-1][0] - 1]))
    if len(starts) != crops:
        raise UsageError(f"the prompt holds {len(starts)} image crops but pixel_values "
                         f"{crops}; build the inputs with the model's processor.")
    groups, current = [], 0
    for _, before in starts:
        current += 1
        if before in last_marker:
            groups.append(current)
            current = 0
    if current:
        groups.append(current)
    return groups


class Idefics3(Adapter):
    """Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration: each image is
    several crops plus a global view, each crop a pixel-shuffled raster of tokens between
    text tokens."""

    image_kwargs = ("pixel_values", "pixel_attention_mask", "image_hidden_states")

    def images(self, kw, ids, needs):
        feats = self.core.get_image_features(kw["pixel_values"], kw.get("pixel_attention_mask"),
                                             return_dict=True).pooler_output
        crops, size = feats.shape[0], feats.shape[1]
        side = int(round(size ** 0.5))
        out, at = [], 0
        for n in crop_groups(ids, self.image_token_id, crops, size):
            grid = (side, side) if n == 1 and side * side == size else None
            out.append(ImageTokens(feats[at:at + n].reshape(n * size, -1), grid))
            at += n
        return out


class Qwen2VL(Adapter):
    """Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration: tokens are the
    merged patch grid in raster order; positions are 3-D (M-RoPE)."""

    image_kwargs = ("pixel_values", "image_grid_thw")
    provides = frozenset({"text", "probe", "grid"})

    def images(self, kw, ids, needs):
        thw = kw.get("image_grid_thw")
        if thw is None:
            raise UsageError("Qwen2-VL inputs need image_grid_thw next to pixel_values; build "
                             "them with the model's processor.")
        feats = self.core.get_image_features(kw["pixel_values"], thw,
                                             return_dict=True).pooler_output
        m = self.core.visual.spatial_merge_size
        out = []
        for f, (t, h, w) in zip(feats, thw.tolist(), strict=True):
            grid = (h // m, w // m) if t == 1 and (h // m) * (w // m) == f.shape[0] else None
            out.append(ImageTokens(f, grid))
        return out

    def positions(self, kw, ids, mask):
        if kw.get("position_ids") is not None:
            return kw["position_ids"]
        extra = {k: kw[k] for k in ("second_per_grid_ts",) if kw.get(k) is not None}
        pos, deltas = self.core.get_rope_index(ids, image_grid_thw=kw.get("image_grid_thw"),
                                               video_grid_thw=None, attention_mask=mask,
                                               **extra)
        self.core.rope_deltas = deltas
        return pos

    def decode_positions(self, cache_position, kept, past):
        """New tokens continue each row's prompt (what ``generate`` and ``get_rope_index``
        over the whole sequence give), on all three axes."""
        q = cache_position.shape[0]
        step = torch.arange(past - kept.width, past - kept.width + q,
                            device=cache_position.device)
        pos = kept.next_position.to(cache_position.device)[:, None] + step[None, :]
        return pos[None].expand(3, -1, -1)


ADAPTERS: dict[str, type[Adapter]] = {
    "LlavaForConditionalGeneration": Llava,
    "LlavaNextForConditionalGeneration": LlavaNext,
    "Idefics3ForConditionalGeneration": Idefics3,
    "SmolVLMForConditionalGeneration": Idefics3,     # Idefics3's layout and code
    "Qwen2VLForConditionalGeneration": Qwen2VL,
    "Qwen2_5_VLForConditionalGeneration": Qwen2VL,
}


def adapter_for(model) -> Adapter:
    """The :class:`Adapter` of ``model``'s class, or a one-line :class:`UsageError`."""
    cls = ADAPTERS.get(type(model).__name__)
    if cls is None:
        raise UsageError(f"vlm.prune does not support {type(model).__name__}; supported: "
                         f"{', '.join(ADAPTERS)} (see the README's vlm section).")
    return cls(model)
