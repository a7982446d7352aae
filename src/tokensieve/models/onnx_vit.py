"""The ViT inside an exported ONNX network mapped onto a transformers ``Dinov2Model``: its
initializers named by the graph's nodes, its config inferred from their shapes and the graph's
constants, the model built and checked key by key. Used by :mod:`.dinov2`; the onnx package is
needed only here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import TokensieveError

PREFIX = "backbone"  # module name of the ViT inside the exported network


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
                             backbone_output(graph, prefix))


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


def backbone_output(graph, prefix: str) -> str:
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
