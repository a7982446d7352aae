"""``vlm.load``: the project's small VLM, or a VLM saved in a local Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, UsageError


def load(name: str = "default", *, device: str = "cpu", attn_implementation: str = "sdpa"):
    """(model, processor). ``"default"``: the small VLM (DINOv2-S, the shipped projector,
    SmolLM2-135M-Instruct), built from the embedded models, nothing downloaded. Otherwise
    ``name`` is a local folder holding a supported VLM (Llava, LlavaNext, Idefics3 / SmolVLM,
    Qwen2-VL, Qwen2.5-VL) and its processor; it is read with ``local_files_only``."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"vlm.load takes 'default' or a local folder, got {name!r}.")
    if name == "default":
        from ..models.llava_small import load_small_vlm

        return load_small_vlm(device=device, cache=False)
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"{name}: not a local Hugging Face model folder (no config.json); "
                         "tokensieve never downloads models: save the VLM with "
                         "save_pretrained() and its processor next to it.")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models.devices import resolve_device

    model = AutoModelForImageTextToText.from_pretrained(
        folder, local_files_only=True, attn_implementation=attn_implementation)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    from .adapters import adapter_for

    adapter_for(model)   # an unsupported class is refused here, in one line
    return model.to(resolve_device(device)).eval(), processor
