"""vlm.load: the small VLM by name, a local folder, and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from vlm_models import build

from tokensieve import vlm
from tokensieve.errors import InputError, UsageError


def test_default_is_the_small_vlm_with_a_chat_processor():
    model, processor = vlm.load("default")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True)
    image = torch.zeros(224, 224, 3, dtype=torch.uint8).numpy()
    ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"]
    assert int((ids == model.config.image_token_id).sum()) == 256


def test_a_local_folder_loads_and_is_checked(tmp_path):
    tiny = build("llava_clip")
    _, processor = vlm.load("default")
    tiny.model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, proc = vlm.load(str(tmp_path))
    assert type(model) is type(tiny.model) and not model.training
    for name, p in tiny.model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name])
    assert type(proc).__name__ == "LlavaProcessor"


@pytest.mark.parametrize("name, error, match", [
    ("/no/such/folder", InputError, "config.json"), ("", UsageError, "local folder"),
    (None, UsageError, "local folder")])
def test_bad_names_fail_in_one_line(name, error, match):
    with pytest.raises(error, match=match) as info:
        vlm.load(name)
    assert "\n" not in str(info.value)
