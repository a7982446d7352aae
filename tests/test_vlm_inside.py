"""The inside stage (tokensieve.vlm.inside): visual tokens leave the language model's
sequence after layer k, on tiny random VLMs built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

from tokensieve.errors import UsageError
from tokensieve.vlm.inside import install_inside
from tokensieve.vlm.methods import VLMMethod
from tokensieve.vlm.methods.base import top

transformers = pytest.importorskip("transformers")

IMG = 63          # the image token id of the tiny models
N = 16            # visual tokens per image (a 4x4 grid)
PX = 32           # image side in pixels


def tiny_llava(attn: str = "sdpa", seed: int = 0):
    """A random LlavaForConditionalGeneration: CLIP tower (16 patches + CLS) and a 4-layer
    Llama with grouped-query attention."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, image_size=PX, patch_size=8, projection_dim=32)
    tc = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     pad_token_id=0, eos_token_id=None)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc,
                                                      image_token_id=IMG)).eval()
    model.set_attn_implementation(attn)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


def tiny_llama(attn: str = "sdpa"):
    """A plain random causal LM; runs of token 63 play images."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=0)).eval()
    model.set_attn_implementation(attn)
    return model


def prompt(pre: list[int], post: list[int], images: int = 1) -> list[int]:
    return [1, *pre] + ([IMG] * N + [7]) * images + post


def batch(rows: list[list[int]]):
    """Left-padded input ids, attention mask and generate-style position ids."""
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, PX, PX, generator=torch.Generator().manual_seed(seed))


ROWS = [prompt([2, 3], [4, 5, 6]), prompt([9], [11, 12, 13, 14, 15, 16])]


class Keep(VLMMethod):
    """Test method: keep the ``count`` highest of one Inside field; records what it saw."""

    name = "test-keep"
    stages = frozenset({"inside"})

    def __init__(self, field: str = "text_attention") -> None:
        self.field, self.seen = field, []

    def select(self, v):
        self.seen.append(v)
        return top(getattr(v, self.field), v.count)


def kept_positions(records, rows: int) -> list[set[int]]:
    """Per row, the sequence positions of the dropped visual tokens."""
    dropped = [set() for _ in range(rows)]
    for r in records:
        kept = set((r.start + r.kept).tolist())
        dropped[r.row] |= set(range(r.start, r.start + r.before)) - kept
    return dropped


def test_cache_of_every_layer_holds_only_kept_tokens_and_budget_is_exact():
    model = tiny_llava()
    ids, mask, pos = batch([prompt([2], [4, 5], images=2)])
    with install_inside(model, "random", count=5, layer=1, image_token_id=IMG) as h:
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2), use_cache=True)
    L = ids.shape[1]
    assert [(r.image, r.before, r.after, len(r.kept)) for r in h.records] == [
        (0, N, 5, 5), (1, N, 5, 5)]
    for lay in out.past_key_values.layers:
        assert lay.keys.shape[2] == lay.values.shape[2] == L - 2 * (N - 5)
    assert out.logits.shape[1] == L - 2 * (N - 5)
    # keep= uses the shared rounding rule (floor, at least 1)
    with install_inside(model, "random", keep=0.2, layer=0, image_token_id=IMG) as h:
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2))
    assert [r.after for r in h.records] == [3, 3]


def test_remove_restores_the_model():
    model = tiny_llava()
    ids, mask, pos = batch([ROWS[0]])
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels(1))
    base = model(**kw).logits
    h = install_inside(model, "random", count=3, layer=1, image_token_id=IMG)
    assert model(**kw).logits.shape[1] == base.shape[1] - (N - 3)
    h.remove()
    assert torch.equal(model(**kw).logits, base)
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(not lay._forward_hooks and not lay._forward_pre_hooks
               for lay in model.model.language_model.layers)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keeping_every_token_gives_the_unpatched_logits(attn):
    model = tiny_llava(attn)
    ids, mask, pos = batch(ROWS)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pixels(2))
    base = model(**kw).logits
    with install_inside(model, "random", count=N, layer=1, image_token_id=IMG):
        got = model(**kw).logits
    assert torch.equal(got, base)


def _masked_reference(model, lm, layer, dropped, kw):
    """The unpatched model with the dropped tokens masked (not removed) as keys in layers
    after ``layer``: what the pruned model must compute for the kept tokens."""
    L, dev = kw["input_ids"].shape[1], kw["input_ids"].device
    cut = torch.zeros(len(dropped), L, dtype=torch.bool)
    for b, d in enumerate(dropped):
        cut[b, sorted(d)] = True
    cut = cut.to(dev)

    def hook(mod, args, kwargs):
        m = kwargs.get("attention_mask")
        if m is None:
            m = torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None, None]
            m = m.expand(len(dropped), 1, L, L)
        m = m.expand(len(dropped), -1, -1, -1)
        if m.dtype == torch.bool:
            m = m & ~cut[:, None, None, :]
        else:
            m = m.masked_fill(cut[:, None, None, :], torch.finfo(m.dtype).min)
        return args, dict(kwargs, attention_mask=m)

    hooks = [lay.register_forward_pre_hook(hook, with_kwargs=True)
             for lay in lm.layers[layer + 1:]]
    try:
        return model(**kw, use_cache=True)
    finally:
        for h in hooks:
            h.remove()


# rows lose different numbers (2 images vs 1), so the shorter one is re-left-padded; in the
# second pair no row is padded to begin with (SDPA's mask is None until the drop)
PAIRS = [[prompt([2], [4, 5], images=2), ROWS[1]],
         [prompt([2], [4, 5], images=2), prompt([2] + [9] * (N + 1), [4, 5])]]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("rows", PAIRS, ids=["padded", "unpadded"])
def test_pruned_prefill_and_decode_equal_masking_the_dropped_tokens(attn, rows, device):
    """Removing tokens after layer k (gathered rows, positions, mask, re-left-padding, KV
    eviction, decode mask) computes what masking them out would: checks all the plumbing."""
    model = tiny_llava(attn).to(device)
    lm = model.model.language_model
    ids, mask, pos = (t.to(device) for t in batch(rows))
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos,
              pixel_values=pixels(3).to(device))
    with install_inside(model, Keep(), count=4, layer=1, image_token_id=IMG) as h:
        out = model(**kw, use_cache=True)
        dropped = kept_positions(h.records, 2)
        assert [len(d) for d in dropped] == [2 * (N - 4), N - 4]
        L2 = ids.shape[1] - (N - 4)
        assert out.logits.shape[1] == L2
        assert all(lay.keys.shape[2] == L2 for lay in out.past_key_values.layers)
        nxt = torch.full((2, 1), IMG, device=device)  # a decode step may generate it
        one = torch.ones(2, 1, dtype=mask.dtype, device=device)
        step = dict(input_ids=nxt, attention_mask=torch.cat([mask, one], 1),
                    position_ids=pos[:, -1:] + 1,
                    cache_position=torch.tensor([ids.shape[1]], device=device),
                    past_key_values=out.past_key_values)
        dec = model(**step).logits[:, -1]
    ref = _masked_reference(model, lm, 1, dropped, kw)
    for b in range(2):
        keep = [i for i in range(ids.shape[1]) if mask[b, i] and i not in dropped[b]]
        got = out.logits[b, L2 - len(keep):]
        torch.testing.assert_close(got, ref.logits[b, keep], rtol=1e-4, atol=1e-5)
    # decode: the reference keeps every entry in its cache and masks the dropped ones
    ref_mask = mask.clone()
    for b, d in enumerate(dropped):
        ref_mask[b, sorted(d)] = 0
    step.update(attention_mask=torch.cat([ref_mask, one], 1),
                past_key_values=ref.past_key_values)
    torch.testing.assert_close(dec, model(**step).logits[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_batch_with_left_padding_equals_each_row_alone(beams):
    model = tiny_llava()
    px = pixels(2)
    ids, mask, _ = batch(ROWS)
    gen = dict(max_new_tokens=5, do_sample=False, num_beams=beams)
    with install_inside(model, "random", keep=0.25, layer=1, image_token_id=IMG, seed=3) as h:
        both = model.generate(input_ids=ids, attention_mask=mask, pixel_values=px, **gen)
        kept_both = [r.kept.tolist() for r in h.records]
        alone, kept_alone = [], []
        for b, row in enumerate(ROWS):
            i1, m1, _ = batch([row])
            alone.append(model.generate(input_ids=i1, attention_mask=m1,
                                        pixel_values=px[b:b + 1], **gen)[0, -5:])
            kept_alone += [r.kept.tolist() for r in h.records]
    assert torch.equal(both[:, -5:], torch.stack(alone))
    assert len(kept_both) == 2 * beams and kept_both == kept_alone


def test_inside_fields_match_the_model_attention_and_selection_follows_it():
    """Known attention pattern: the unpatched eager model's own attention maps at layer k.
    The Inside fields equal them (RoPE, GQA, scaling, left padding) and a method keeping
    the tokens the question attends to most keeps exactly those."""
    model = tiny_llava("eager")
    ids, mask, pos = batch(ROWS)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pixels(2))
    k = 2
    ref = model(**kw, output_attentions=True, output_hidden_states=True)
    att = ref.attentions[k].mean(1)  # (B, L, L) head mean
    method = Keep("text_attention")
    with install_inside(model, method, count=5, layer=k, image_token_id=IMG) as h:
        model(**kw)
    for b, (v, rec) in enumerate(zip(method.seen, h.records, strict=True)):
        s = rec.start
        img = list(range(s, s + N))
        text = [i for i in range(s + N, ids.shape[1]) if ids[b, i] != IMG]
        want = att[b][text][:, img].mean(0)
        torch.testing.assert_close(v.text_attention, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(v.last_attention, att[b, -1, img], rtol=1e-4, atol=1e-6)
        vis = att[b][img][:, img].clone().fill_diagonal_(0).sum(0) / (N - 1)
        torch.testing.assert_close(v.visual_attention, vis, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(v.hidden, ref.hidden_states[k + 1][b, s:s + N])
        torch.testing.assert_close(v.hidden_in, ref.hidden_states[k][b, s:s + N])
        torch.testing.assert_close(v.text_hidden, ref.hidden_states[k + 1][b, text])
        assert (v.layer, v.num_layers, v.grid) == (k, 4, (4, 4))
        assert rec.kept.tolist() == sorted(want.topk(5).indices.tolist())


def test_question_agnostic_fills_text_fields_from_the_image():
    model = tiny_llava()
    ids, mask, pos = batch([ROWS[0]])
    method = Keep("last_attention")
    with install_inside(model, method, count=4, layer=0, image_token_id=IMG,
                        question_aware=False):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels(1))
    v = method.seen[0]
    assert torch.equal(v.text_attention, v.visual_attention)
    assert torch.equal(v.last_attention, v.visual_attention)
    assert v.text_hidden.shape == (0, 32)


def test_plain_causal_lm_with_an_image_token_id():
    model = tiny_llama()
    ids, mask, pos = batch([prompt([2], [4, 5], images=2), prompt([], [8])])
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos)
    base = model(**kw).logits
    with install_inside(model, "grid", count=N, layer=0, image_token_id=IMG):
        assert torch.equal(model(**kw).logits, base)
    with install_inside(model, "grid", count=4, layer=1, image_token_id=IMG) as h:
        out = model(**kw, use_cache=True)
    assert len(h.records) == 3 and all(r.after == 4 for r in h.records)
    # the row with one image loses fewer tokens; the other is re-left-padded to its length
    assert out.past_key_values.layers[0].keys.shape[2] == ids.shape[1] - (N - 4)


def test_merge_map_averages_into_the_kept_token():
    class MergeAll(VLMMethod):
        name, stages = "test-merge", frozenset({"inside"})

        def select(self, v):
            into = torch.full((v.n,), 0)
            into[1:v.count] = torch.arange(1, v.count)
            self.hidden = v.hidden.clone()
            return into

    model = tiny_llama()
    ids, mask, pos = batch([prompt([2], [4, 5])])
    m = MergeAll()
    seen = {}
    lm = model.model
    hook = lm.layers[2].register_forward_pre_hook(
        lambda mod, args: seen.setdefault("h", args[0].clone()))
    with install_inside(model, m, count=3, layer=1, image_token_id=IMG) as h:
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    s = h.records[0].start
    want = torch.cat([m.hidden[:1], m.hidden[3:]]).mean(0)
    torch.testing.assert_close(seen["h"][0, s], want)
    assert h.records[0].into is not None and h.records[0].kept.tolist() == [0, 1, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=-1), "out of range"),
    (dict(layer=3), "0..2"),
    (dict(layer=True), "whole number"),
    (dict(layer=1.0), "whole number"),
    (dict(layer=1, keep=0.5, count=3), "exactly one budget"),
    (dict(layer=1, keep=None), "exactly one budget"),
    (dict(layer=1, keep=1.5), "fraction"),
    (dict(layer=1, keep=None, count=0), "positive"),
    (dict(layer=1, image_token_id="<image>"), "token id"),
])
def test_bad_settings_give_one_line_errors(kwargs, match):
    model = tiny_llava()
    args = dict(keep=0.5, image_token_id=IMG) | kwargs
    with pytest.raises(UsageError, match=match) as e:
        install_inside(model, "random", **args)
    assert "\n" not in str(e.value)
    assert not model._forward_pre_hooks


def test_before_only_method_and_flash_attention_are_refused():
    class BeforeOnly(VLMMethod):
        name = "before-only"

    model = tiny_llava()
    with pytest.raises(UsageError, match="stage='before'"):
        install_inside(model, BeforeOnly(), keep=0.5, layer=1, image_token_id=IMG)
    model.model.language_model.config._attn_implementation = "flex_attention"
    with pytest.raises(UsageError, match="sdpa"):
        install_inside(model, "random", keep=0.5, layer=1, image_token_id=IMG)


def test_image_tokens_on_a_filled_cache_are_refused():
    model = tiny_llava()
    ids, mask, _ = batch([ROWS[0]])
    out = model(input_ids=ids[:, :2], attention_mask=mask[:, :2], use_cache=True)
    with install_inside(model, "random", keep=0.5, layer=1, image_token_id=IMG):
        with pytest.raises(UsageError, match="empty cache"):
            model(input_ids=ids[:, 2:], attention_mask=mask, pixel_values=pixels(1),
                  past_key_values=out.past_key_values)


# -- Qwen2-VL: 3-D M-RoPE positions, cos/sin of shape (3, B, L, D), grids from image_grid_thw --
VS, VE = 61, 60   # vision start / end tokens


def tiny_qwen2_vl(attn: str = "sdpa"):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    cfg = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                           patch_size=2, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                          "rope_theta": 10000.0}),
        image_token_id=IMG, video_token_id=62, vision_start_token_id=VS, vision_end_token_id=VE)
    torch.manual_seed(2)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.set_attn_implementation(attn)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


THW = [(1, 8, 8), (1, 4, 16)]   # 64 patches each, 16 tokens after the 2x2 merge: (4,4), (2,8)


def qwen_inputs(rows: list[list[int]], images: list[int]):
    """Inputs for ``rows`` whose images are ``images`` (indices into THW; image i's pixels
    are seeded by i)."""
    ids, mask, _ = batch(rows)
    grids = [THW[i % 2] for i in images]
    px = torch.cat([torch.randn(t * h * w, 24, generator=torch.Generator().manual_seed(i))
                    for i, (t, h, w) in zip(images, grids, strict=True)])  # 24 = 3 x 2 x 2 x 2
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px,
                image_grid_thw=torch.tensor(grids))


def qprompt(pre, post, images=1):
    return [1, *pre] + ([VS] + [IMG] * N + [VE]) * images + post


QROWS = [qprompt([2], [4, 5], images=2), qprompt([9], [11, 12, 13])]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_qwen2_vl_keep_all_and_masked_reference(attn):
    model = tiny_qwen2_vl(attn)
    kw = qwen_inputs(QROWS, [0, 1, 2])
    base = model(**kw).logits
    with install_inside(model, "random", count=N, layer=1, image_token_id=IMG):
        assert torch.equal(model(**kw).logits, base)
    method = Keep("text_attention")
    with install_inside(model, method, count=4, layer=1, image_token_id=IMG) as h:
        out = model(**kw, use_cache=True)
    assert [v.grid for v in method.seen] == [(4, 4), (2, 8), (4, 4)]
    dropped = kept_positions(h.records, 2)
    L2 = kw["input_ids"].shape[1] - (N - 4)
    assert all(lay.keys.shape[2] == L2 for lay in out.past_key_values.layers)
    ref = _masked_reference(model, model.model.language_model, 1, dropped, kw)
    mask = kw["attention_mask"]
    for b in range(2):
        keep = [i for i in range(mask.shape[1]) if mask[b, i] and i not in dropped[b]]
        torch.testing.assert_close(out.logits[b, L2 - len(keep):], ref.logits[b, keep],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beams", [1, 2])
def test_qwen2_vl_generate_batch_equals_each_row_alone(beams):
    model = tiny_qwen2_vl()
    gen = dict(max_new_tokens=4, do_sample=False, num_beams=beams)
    with install_inside(model, Keep(), keep=0.25, layer=2,
                        image_token_id=IMG):
        both = model.generate(**qwen_inputs(QROWS, [0, 1, 2]), **gen)[:, -4:]
        alone = [model.generate(**qwen_inputs([QROWS[0]], [0, 1]), **gen)[0, -4:],
                 model.generate(**qwen_inputs([QROWS[1]], [2]), **gen)[0, -4:]]
    assert torch.equal(both, torch.stack(alone))


def test_sampling_runs_and_is_seeded():
    model = tiny_llava()
    ids, mask, _ = batch(ROWS)
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=True, top_k=0,
               num_return_sequences=2)
    outs = []
    with install_inside(model, "random", keep=0.25, layer=1, image_token_id=IMG) as h:
        for _ in range(2):
            torch.manual_seed(7)
            outs.append(model.generate(input_ids=ids, attention_mask=mask,
                                       pixel_values=pixels(2), **gen))
    assert outs[0].shape == (4, ids.shape[1] + 4) and torch.equal(outs[0], outs[1])
    assert len(h.records) == 4 and all(r.after == 4 for r in h.records)


def test_a_static_cache_is_refused():
    from transformers import StaticCache
    model = tiny_llava()
    ids, mask, _ = batch([ROWS[0]])
    cache = StaticCache(config=model.config, max_cache_len=64)
    with install_inside(model, "random", keep=0.5, layer=1, image_token_id=IMG):
        with pytest.raises(UsageError, match="DynamicCache"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels(1),
                  past_key_values=cache)


def test_installing_twice_is_refused_and_remove_allows_again():
    model = tiny_llava()
    h = install_inside(model, "random", keep=0.5, layer=1, image_token_id=IMG)
    with pytest.raises(UsageError, match="already"):
        install_inside(model, "random", keep=0.5, layer=2, image_token_id=IMG)
    h.remove()
    h.remove()  # idempotent
    install_inside(model, "random", keep=0.5, layer=2, image_token_id=IMG).remove()


def test_adjacent_images_are_cut_by_their_known_token_counts():
    from tokensieve.vlm.inside import _split
    images = [(4, None), (6, None), (3, None)]
    assert _split([(2, 12), (15, 18)], images) == [(2, 6), (6, 12), (15, 18)]
    assert _split([(2, 12)], []) == [(2, 12)]                  # counts unknown: one image
    assert _split([(2, 5), (7, 17)], [(3, None), (4, None), (6, None)]) == [
        (2, 5), (7, 11), (11, 17)]


@pytest.mark.parametrize("kv_first", [True, False])
def test_stacking_with_kv_is_refused_with_a_clear_error(kv_first):
    from contextlib import ExitStack

    from tokensieve import kv
    model = tiny_llava()
    ids, mask, _ = batch([ROWS[0]])
    blocks = [lambda: kv.compress(model, keep=0.5),
              lambda: install_inside(model, "random", keep=0.5, layer=1, image_token_id=IMG)]
    with ExitStack() as stack:
        for make in blocks if kv_first else blocks[::-1]:
            stack.enter_context(make())
        with pytest.raises(UsageError, match="does not stack with tokensieve.kv"):
            model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels(1),
                           max_new_tokens=2)


# -- Idefics3 (SmolVLM: model.model.text_model) and Qwen2.5-VL --------------------------------
def tiny_idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=64, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, pad_token_id=0),
        image_token_id=IMG, scale_factor=2)  # 64 patches, pixel shuffle 2x2: 16 tokens
    torch.manual_seed(3)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    ids, mask, _ = batch([prompt([2], [4, 5])])
    return model, model.model.text_model, dict(input_ids=ids, attention_mask=mask,
                                                 pixel_values=pixels(1)[None])


def tiny_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=32, out_hidden_size=32, intermediate_size=64,
                           num_heads=2, patch_size=2, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=8, fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=0, rope_parameters={"rope_type": "default",
                                                          "mrope_section": [1, 1, 2],
                                                          "rope_theta": 10000.0}),
        image_token_id=IMG, video_token_id=62, vision_start_token_id=VS, vision_end_token_id=VE)
    torch.manual_seed(4)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    return model, model.model.language_model, qwen_inputs(QROWS, [0, 1, 2])


def tiny_llava_next():
    """LlavaNext: one image is a base view and two crops (32x64 pixels), one run of tokens."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
    cfg = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32,
                           patch_size=8),
        text_config=dict(model_type="llama", vocab_size=64, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, pad_token_id=0),
        image_token_id=IMG, image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-1)
    torch.manual_seed(5)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    px, sizes = pixels(3)[None], torch.tensor([[32, 64]])
    n = model.model.get_image_features(px, sizes, vision_feature_layer=-1,
                                       vision_feature_select_strategy="default")
    n = (n.pooler_output if hasattr(n, "pooler_output") else n)[0].shape[0]
    rows = [[1, 2] + [IMG] * n + [7, 4, 5], [1] + [IMG] * n + [7, 8]]
    ids, mask, _ = batch(rows)
    return model, model.model.language_model, dict(
        input_ids=ids, attention_mask=mask, pixel_values=torch.cat([px, px]),
        image_sizes=torch.cat([sizes, sizes]))


@pytest.mark.parametrize("build", [tiny_idefics3, tiny_qwen2_5_vl, tiny_llava_next])
def test_other_classes_keep_all_and_masked_reference(build):
    model, lm, kw = build()
    base = model(**kw).logits
    with install_inside(model, "random", count=10_000, layer=1, image_token_id=IMG):  # all
        assert torch.equal(model(**kw).logits, base)
    with install_inside(model, Keep(), count=4, layer=1, image_token_id=IMG) as h:
        out = model(**kw, use_cache=True)
    rows = kw["input_ids"].shape[0]
    dropped = kept_positions(h.records, rows)
    L2 = kw["input_ids"].shape[1] - min(len(d) for d in dropped)
    assert all(lay.keys.shape[2] == L2 for lay in out.past_key_values.layers)
    ref = _masked_reference(model, lm, 1, dropped, kw)
    mask = kw["attention_mask"]
    for b in range(rows):
        keep = [i for i in range(mask.shape[1]) if mask[b, i] and i not in dropped[b]]
        torch.testing.assert_close(out.logits[b, L2 - len(keep):], ref.logits[b, keep],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("answer", [
    torch.tensor([True] * 3 + [False] * 13),               # 3 kept, 4 wanted
    torch.tensor([0, 1, 2] + [17] * 12 + [15]),            # merged into a token out of range
    torch.tensor([0, 1, 2, 3] + [5] * 12),                 # merged into a dropped token
])
def test_a_method_breaking_the_budget_is_caught(answer):
    class Bad(VLMMethod):
        name, stages = "bad", frozenset({"inside"})

        def select(self, v):
            return answer

    model = tiny_llava()
    ids, mask, _ = batch([ROWS[0]])
    with install_inside(model, Bad(), count=4, layer=1, image_token_id=IMG):
        with pytest.raises(RuntimeError, match="method 'bad'"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels(1))
