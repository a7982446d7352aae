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


def reduce_images(paths: list[str], method: str = "default", *, keep: float | None = None,
                  count: int | None = None, at=None, model: str = "default",
                  device: str = "cpu") -> list[ImageResult]:
    from ..bench.vision_data import to_pixel_values
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
