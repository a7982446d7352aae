"""vlm.prune, the before stage, on tiny random models of every supported class: the language
model really sees a shorter sequence (the kept tokens, their original positions), the budget
is exact, keep=1.0 is untouched, generate (greedy, beams, sampling) matches the oracle of
pruning (the same tokens masked out instead of removed), batched rows equal their runs
alone, the wrapper is undone on exit and on error, bad settings fail in one line."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from vlm_models import IMAGE, KINDS, build, dropped, language_model, masked_twin

from tokensieve import kv, vlm
from tokensieve.engine.budget import keep_count
from tokensieve.errors import UsageError
from tokensieve.vlm import Visual, VLMMethod
from tokensieve.vlm.adapters import adapter_for
from tokensieve.vlm.look_head import LookHead
from tokensieve.vlm.methods.learned import Learned

ROWS = [(1, 3, 4), (2, 1, 2)]       # row 0: one image; row 1: two images, shorter text


class DropOne(VLMMethod):
    """Test method: keeps every token but one."""

    name = "drop_one"

    def __init__(self, which: int = 5):
        self.which = which

    def select(self, v):
        mask = torch.ones(v.n, dtype=torch.bool)
        mask[self.which] = False
        return mask


class MergeTail(VLMMethod):
    """Test method: keeps the first ``count`` tokens and merges all the others into token 0."""

    name = "merge_tail"

    def select(self, v):
        into = torch.arange(v.n)
        into[v.count:] = 0
        return into


class Spy(VLMMethod):
    """Test method: records what it was given, keeps the first ``count`` tokens."""

    name = "spy"

    def __init__(self, needs=frozenset()):
        self.needs = frozenset(needs)
        self.seen: list[Visual] = []

    def select(self, v):
        self.seen.append(v)
        mask = torch.zeros(v.n, dtype=torch.bool)
        mask[:v.count] = True
        return mask


@contextmanager
def seen_by_lm(model):
    """Every call of the language model: its input embeddings, mask, positions, and the
    cache length before the call."""
    calls = []

    def pre(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        calls.append({"embeds": kwargs.get("inputs_embeds"), "mask": kwargs.get("attention_mask"),
                      "positions": kwargs.get("position_ids"),
                      "past": cache.get_seq_length() if cache is not None else 0})

    handle = language_model(model).register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def setup(kind, attn="sdpa"):
    tiny = build(kind, attn)
    return tiny, tiny.model, tiny.inputs(ROWS)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_sequence_shorter_budget_exact_and_kept_tokens_fed(kind):
    tiny, model, inputs = setup(kind)
    with seen_by_lm(model) as full:
        model(**inputs)
    with vlm.prune(model, "random", keep=0.25) as r, seen_by_lm(model) as calls:
        out = model(**inputs, use_cache=True)
    n, k = tiny.tokens_per_image, keep_count(0.25, tiny.tokens_per_image)
    assert [(rec.row, rec.tokens, len(rec.kept)) for rec in r.last] == [(0, n, k), (1, n, k),
                                                                        (1, n, k)]
    assert all(rec.stages == {"vision": n, "llm": k} and rec.into is None for rec in r.last)
    length = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].bool() & ~dropped(inputs, r.last)
    width = int(real.sum(1).max())
    assert width == length - 2 * (n - k)           # the longer row lost two images' worth
    assert r.lengths == (length, width)
    assert calls[0]["embeds"].shape[1] == width and out.logits.shape[1] == width
    assert out.past_key_values.get_seq_length() == width
    for row in range(2):  # the kept tokens, in order, left-padded, as the unpruned model had them
        cnt = int(real[row].sum())
        assert torch.equal(calls[0]["embeds"][row, width - cnt:], full[0]["embeds"][row, real[row]])
        assert calls[0]["mask"][row].tolist() == [0] * (width - cnt) + [1] * cnt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["forward", "generate"])
@torch.no_grad()
def test_kept_tokens_keep_their_original_positions(kind, how):
    tiny, model, inputs = setup(kind)

    def run():
        if how == "forward":
            model(**inputs)
        else:
            model.generate(**inputs, max_new_tokens=1, do_sample=False)

    with seen_by_lm(model) as full:
        run()
    with vlm.prune(model, DropOne(5), count=tiny.tokens_per_image - 1) as r, \
            seen_by_lm(model) as calls:
        run()
    assert all(len(rec.kept) == rec.tokens - 1 and 5 not in rec.kept.tolist() for rec in r.last)
    expected, got = full[0]["positions"], calls[0]["positions"]
    length = inputs["input_ids"].shape[1]
    if expected is None:  # the LM numbers an unpruned prompt by cache_position
        expected = torch.arange(length).expand(2, length)
    if kind.startswith("qwen"):
        assert got.dim() == 3 and got.shape[0] == expected.shape[0] >= 3   # 3-D M-RoPE kept
        assert not torch.equal(got[-2], got[-1])   # height and width rows differ on images
    real = inputs["attention_mask"].bool() & ~dropped(inputs, r.last)
    for row in range(2):
        cnt = int(real[row].sum())
        assert torch.equal(got[..., row, -cnt:], expected[..., row, real[row]])


@pytest.mark.parametrize("kind, attn", [(k, "sdpa") for k in KINDS]
                         + [("llava_clip", "eager"), ("qwen2_vl", "eager")])
@torch.no_grad()
def test_generate_equals_the_masked_oracle(kind, attn):
    """Greedy, beam and sampled generation on the pruned sequence give the tokens (and the
    logits) of the unpruned model with the same tokens masked out at their original
    positions: mask, positions and KV cache agree at every step (SDPA and eager)."""
    tiny, model, inputs = setup(kind, attn)
    assert model.config.text_config._attn_implementation == attn
    settings = [dict(do_sample=False), dict(do_sample=False, num_beams=3),
                dict(do_sample=True, top_k=20)]
    for extra in settings:
        torch.manual_seed(3)
        with vlm.prune(model, "random", keep=0.5, seed=1) as r:
            got = model.generate(**inputs, max_new_tokens=4, output_logits=True,
                                 return_dict_in_generate=True, **extra)
        twin = masked_twin(model, inputs, dropped(inputs, r.last[:3] if extra.get("num_beams")
                                                  is None else r.last[::3]))
        torch.manual_seed(3)
        want = model.generate(**twin, max_new_tokens=4, output_logits=True,
                              return_dict_in_generate=True, **extra)
        assert torch.equal(got.sequences, want.sequences), extra
        for a, b in zip(got.logits, want.logits, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("extra", [dict(do_sample=False), dict(num_beams=2, do_sample=False),
                                   dict(do_sample=True)], ids=["greedy", "beams", "sample"])
@torch.no_grad()
def test_kv_cache_length_agrees_with_the_mask(kind, extra):
    tiny, model, inputs = setup(kind)
    torch.manual_seed(0)
    with vlm.prune(model, "random", keep=0.25) as r, seen_by_lm(model) as calls:
        out = model.generate(**inputs, max_new_tokens=3, return_dict_in_generate=True, **extra)
    width = r.lengths[1]
    assert [c["past"] for c in calls] == [0, width, width + 1]
    for c in calls:  # every call: the mask covers exactly the cache plus the new tokens
        assert c["mask"].shape[1] == c["past"] + c["embeds"].shape[1]
    assert out.past_key_values.get_seq_length() == width + 2


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_keep_one_is_bit_identical(kind):
    tiny, model, inputs = setup(kind)
    logits = model(**inputs).logits
    tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with vlm.prune(model, "random", keep=1.0) as r:
        assert "forward" not in model.__dict__      # nothing installed
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), tokens)
    assert r.last == [] and r.lengths is None


@pytest.mark.parametrize("kind", ["llava_clip", "qwen2_vl"])
@torch.no_grad()
def test_text_only_calls_pass_untouched(kind):
    tiny, model, inputs = setup(kind)
    ids = torch.tensor([[1, 20, 21, 22, 23]])
    # generate first: Qwen2-VL keeps rope_deltas between calls, generate resets them
    tokens = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    logits = model(input_ids=ids).logits
    with vlm.prune(model, "random", keep=0.5) as r:
        assert torch.equal(model.generate(input_ids=ids, max_new_tokens=3, do_sample=False),
                           tokens)
        assert torch.equal(model(input_ids=ids).logits, logits)
    assert r.prefills == 0 and r.last == []


@pytest.mark.parametrize("method", ["random", "probe"])
@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_batch_rows_equal_their_runs_alone(kind, method):
    tiny, model, inputs = setup(kind)
    with vlm.prune(model, method, keep=0.25, seed=4) as r:
        batch = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        new = batch[:, inputs["input_ids"].shape[1]:]
        kept = [rec.kept.tolist() for rec in r.last]
        for row in range(2):
            one = tiny.row(inputs, row)
            alone = model.generate(**one, max_new_tokens=5, do_sample=False)
            alone = alone[0, one["input_ids"].shape[1]:]     # may stop early at EOS
            kept_alone = [rec.kept.tolist() for rec in r.last]
            assert kept_alone == (kept[:1] if row == 0 else kept[1:])
            assert torch.equal(new[row, :len(alone)], alone)
            assert bool((new[row, len(alone):] == 0).all())   # the batch pads after EOS


@pytest.mark.parametrize("kind", ["llava_clip", "llava_siglip", "llava_dinov2"])
@torch.no_grad()
def test_llava_visual_fields(kind):
    tiny, model, inputs = setup(kind)
    needs = {"text", "grid", "vision", "project", "attention"}
    if kind != "llava_siglip":
        needs.add("cls_attention")
    spy = Spy(needs)
    with vlm.prune(model, spy, keep=0.5):
        model(**inputs)
    v = spy.seen[0]
    assert v.grid == (4, 4) and v.count == 8 and v.n == 16
    torch.testing.assert_close(v.project(v.vision), v.features)   # projector input, 1:1
    assert v.text.shape == (6, 32)  # row 0's text after its image (2 + 4 tokens)
    # attention: the tower's own (eager) attention, head-mean, of the layers feeding the LM
    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    ref = tower(inputs["pixel_values"][:1], output_attentions=True).attentions
    drop = 0 if kind == "llava_siglip" else 1
    assert len(v.attention) == 2                    # vision_feature_layer=-2 of 3 layers
    for a, b in zip(v.attention, ref, strict=False):
        torch.testing.assert_close(a, b[0].mean(0)[drop:, drop:], atol=1e-5, rtol=1e-4)
    if kind == "llava_siglip":
        assert v.cls_attention is None
    else:
        for a, b in zip(v.cls_attention, ref, strict=False):
            torch.testing.assert_close(a, b[0].mean(0)[0, 1:], atol=1e-5, rtol=1e-4)
    tap_free = model.model.vision_tower
    assert all("_tokensieve_tap" not in m.__dict__ for m in tap_free.modules())


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_only_what_the_method_needs_is_computed(kind):
    tiny, model, inputs = setup(kind)
    spy = Spy()
    with vlm.prune(model, spy, keep=0.5, question_aware=False):
        model(**inputs)
    v = spy.seen[0]
    assert v.text is None and v.vision is None and v.attention is None
    assert v.cls_attention is None
    with vlm.prune(model, spy, keep=0.5):
        model(**inputs)
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    for s, row in zip(spy.seen[-3:], (0, 1, 1), strict=True):   # the text after the row's images
        after = real[row] & (ids[row] != IMAGE)
        after[:int((ids[row] == IMAGE).nonzero().max())] = False
        assert torch.equal(s.text, model.get_input_embeddings()(ids[row, after]))
    expected_grid = {"llava_next": None, "idefics3": None, "smolvlm": None}.get(kind, (4, 4))
    assert v.grid == expected_grid
    assert model.config._attn_implementation == "sdpa"


@torch.no_grad()
def test_merged_tokens_become_the_mean_of_their_group():
    tiny, model, inputs = setup("llava_clip")
    with seen_by_lm(model) as full:
        model(**inputs)
    with vlm.prune(model, MergeTail(), count=4) as r, seen_by_lm(model) as calls:
        model(**inputs)
    rec = r.last[0]
    assert rec.kept.tolist() == [0, 1, 2, 3] and rec.into.tolist() == [0, 1, 2, 3] + [0] * 12
    ids = inputs["input_ids"][0]
    pos = (ids == IMAGE).nonzero().flatten()
    real = inputs["attention_mask"].bool() & ~dropped(inputs, r.last)
    slots = real[0].nonzero().flatten()
    width = calls[0]["embeds"].shape[1]
    seen = calls[0]["embeds"][0, width - len(slots):]
    at = {int(p): i for i, p in enumerate(slots)}
    group = full[0]["embeds"][0, torch.cat([pos[:1], pos[4:]])]
    torch.testing.assert_close(seen[at[int(pos[0])]], group.mean(0))
    for j in (1, 2, 3):  # kept tokens that absorbed nothing are copied exactly
        assert torch.equal(seen[at[int(pos[j])]], full[0]["embeds"][0, pos[j]])


@torch.no_grad()
def test_wrapper_removed_on_exit_and_on_error():
    tiny, model, inputs = setup("llava_clip")
    logits = model(**inputs).logits
    with vlm.prune(model, "random", keep=0.5):
        assert "forward" in model.__dict__
        with pytest.raises(UsageError, match="already inside"):
            with vlm.prune(model, "random", keep=0.5):
                pass
    assert "forward" not in model.__dict__
    with pytest.raises(RuntimeError):
        with vlm.prune(model, "random", keep=0.5):
            raise RuntimeError("boom")
    assert "forward" not in model.__dict__

    class Wrong(VLMMethod):
        name = "wrong"

        def select(self, v):
            return torch.ones(v.n, dtype=torch.bool)   # keeps more than the budget

    with pytest.raises(UsageError, match="exactly 8 of 16"):
        with vlm.prune(model, Wrong(), keep=0.5):
            model(**inputs)
    assert "forward" not in model.__dict__
    with vlm.prune(model, "random", keep=0.5) as r:   # a second block works
        model(**inputs)
    assert len(r.last) == 3
    assert torch.equal(model(**inputs).logits, logits)
    own = model.forward                   # a forward the user had set is put back
    model.forward = own
    try:
        with vlm.prune(model, "random", keep=0.5):
            model(**inputs)
        assert model.__dict__["forward"] is own
    finally:
        del model.forward


def _video(model, inputs):
    model(**inputs, pixel_values_videos=torch.zeros(64, 96),
          video_grid_thw=torch.tensor([[1, 8, 8]]))


@pytest.mark.parametrize("settings, match", [
    (dict(keep=0), "keep"), (dict(keep=1.5), "keep"), (dict(keep=float("nan")), "keep"),
    (dict(count=0), "count"), (dict(keep=0.5, count=3), "not both"),
    (dict(method="nope"), "unknown VLM method"), (dict(stage="middle"), "unknown stage"),
    (dict(layer=2), "layer= is for stage='inside'"), (dict(seed="x"), "seed"),
])
def test_bad_settings_are_one_line_errors(settings, match):
    tiny, model, inputs = setup("llava_clip")
    with pytest.raises(UsageError, match=match) as err:
        with vlm.prune(model, **settings):
            pass
    assert "\n" not in str(err.value)
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("kind, needs, question_aware, match", [
    ("qwen2_vl", {"attention"}, True, "attention"),
    ("llava_next", {"vision"}, True, "vision tower's features"),
    ("llava_siglip", {"cls_attention"}, True, r"\[CLS\]"),
    ("llava_clip", {"text"}, False, "reads the question"),
])
def test_methods_needing_what_the_model_lacks_are_refused(kind, needs, question_aware, match):
    tiny, model, inputs = setup(kind)
    with pytest.raises(UsageError, match=match) as err:
        with vlm.prune(model, Spy(needs), keep=0.5, question_aware=question_aware):
            pass
    assert "\n" not in str(err.value)


@torch.no_grad()
def test_bad_calls_are_one_line_errors():
    tiny, model, inputs = setup("qwen2_vl")
    with vlm.prune(model, "random", keep=0.5):
        with pytest.raises(UsageError, match="videos") as err:
            _video(model, inputs)
        assert "\n" not in str(err.value)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        no_ids = {k: v for k, v in inputs.items() if k != "input_ids"}
        with pytest.raises(UsageError, match="input_ids"):
            model(**no_ids, inputs_embeds=embeds)
        with pytest.raises(UsageError, match="static"):
            from transformers import StaticCache
            model.generate(**inputs, max_new_tokens=2, past_key_values=StaticCache(
                model.config, max_cache_len=64))
    from transformers import LlamaConfig, LlamaForCausalLM
    with pytest.raises(UsageError, match="does not support LlamaForCausalLM"):
        with vlm.prune(LlamaForCausalLM(LlamaConfig(**{**_TEXT, "num_hidden_layers": 1})),
                       keep=0.5):
            pass


_TEXT = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_attention_heads=2,
             num_key_value_heads=1)


@pytest.mark.parametrize("kind, order", [("llava_clip", "vlm_first"), ("llava_clip", "kv_first"),
                                         ("llava_next", "vlm_first"), ("smolvlm", "kv_first")])
@torch.no_grad()
def test_stacks_with_kv_compress(kind, order):
    """Prune the visual tokens, then compress the KV of what remains: the cache stores
    keep x (L - dropped) entries per layer and head (+ the decoded tokens), in either order,
    with kv's surprisal policy (it scores the kept ids) and an attention one; ``probe``'s
    forward through the language model leaves kv's hooks and cache alone."""
    tiny, model, _ = setup(kind)
    inputs = tiny.inputs([(1, 30, 10)])
    text = model.config.text_config
    n = tiny.tokens_per_image
    for method, policy in (("random", "default"), ("random", "snapkv"), ("probe", "default")):
        blocks = [lambda m=method: vlm.prune(model, m, keep=0.25),
                  lambda p=policy: kv.compress(model, p, keep=0.5, sinks=2, recent=4, window=4)]
        if order == "kv_first":
            blocks.reverse()
        with blocks[0]() as a, blocks[1]() as b:   # min_new_tokens: no early EOS
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        r, s = (a, b) if order == "vlm_first" else (b, a)
        length, width = r.lengths
        assert width == length - (n - keep_count(0.25, n))
        per_layer_head = s.last_cache.entries() / (text.num_hidden_layers
                                                   * text.num_key_value_heads)
        assert per_layer_head == keep_count(0.5, width) + 2    # + the 2 decoded tokens
        assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    with vlm.prune(model, "random", keep=0.25):
        alone = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with vlm.prune(model, "random", keep=0.25), kv.compress(model, "default", keep=1.0):
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), alone)


def test_kv_refuses_qwen2_vl_in_one_line():
    with pytest.raises(UsageError, match="qwen2_vl_text") as err:
        with kv.compress(build("qwen2_vl").model, keep=0.5):
            pass
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_a_manual_decode_of_several_tokens_matches_the_masked_oracle(kind):
    """A forward of two new tokens on a pruned cache, with neither positions nor
    cache_position given: causal among the new tokens, original positions."""
    tiny, model, inputs = setup(kind)
    new = torch.tensor([[5, 6], [7, 8]])
    with vlm.prune(model, "random", keep=0.5) as r:
        cache = model(**inputs, use_cache=True).past_key_values
        twin = copy.deepcopy(cache)    # a copy of a pruned cache decodes the same (kv.answer)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
        got = model(input_ids=new, attention_mask=mask, past_key_values=cache).logits
        assert torch.equal(model(input_ids=new, attention_mask=mask, past_key_values=twin).logits,
                           got)
    full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], new], 1),
                attention_mask=mask * ~torch.cat([dropped(inputs, r.last),
                                                  torch.zeros_like(new, dtype=torch.bool)], 1))
    if kind.startswith("qwen"):
        full["position_ids"] = model.model.get_rope_index(
            full["input_ids"], image_grid_thw=inputs["image_grid_thw"], attention_mask=mask)[0]
    else:  # the language model numbers a prompt without position ids by cache_position
        full["position_ids"] = torch.arange(full["input_ids"].shape[1]).expand(2, -1)
    want = model(**full).logits[:, -2:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_a_count_above_the_image_keeps_it_whole(kind):
    """count= is clipped to each image's tokens: the pruning path then rebuilds the very
    sequence the model builds itself."""
    tiny, model, inputs = setup(kind)
    want = model(**inputs).logits
    with vlm.prune(model, "random", count=10_000) as r:
        got = model(**inputs).logits
    assert [rec.stages["llm"] for rec in r.last] == [tiny.tokens_per_image] * 3
    assert r.lengths == (inputs["input_ids"].shape[1],) * 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava_clip", "qwen2_vl"])
@torch.no_grad()
def test_bfloat16_models_prune_and_merge_in_their_dtype(kind):
    tiny, model, inputs = setup(kind)
    model = copy.deepcopy(model).to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    with vlm.prune(model, MergeTail(), count=4) as r, seen_by_lm(model) as calls:
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert calls[0]["embeds"].dtype == torch.bfloat16 and r.last[0].into is not None
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert calls[0]["embeds"].shape[1] == r.lengths[1] < r.lengths[0]


@pytest.mark.parametrize("kind", ["llava_clip", "qwen2_vl"])
@torch.no_grad()
def test_inside_stage_through_the_public_api(kind):
    """vlm.prune(stage="inside") drops the tokens after the given layer: r.last reports each
    image's tokens per stage, every cache layer holds the shortened sequence, and generate
    runs on it; methods that read the LLM's attention (fastv) are accepted there."""
    tiny, model, inputs = setup(kind)
    n, k = tiny.tokens_per_image, keep_count(0.25, tiny.tokens_per_image)
    with vlm.prune(model, "fastv", keep=0.25, stage="inside", layer=0) as r:
        out = model(**inputs, use_cache=True)
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert [(rec.row, rec.tokens, len(rec.kept)) for rec in r.last] == [(0, n, k), (1, n, k),
                                                                        (1, n, k)]
    assert all(rec.stages == {"vision": n, "llm": n, "after layer 0": k} for rec in r.last)
    length = inputs["input_ids"].shape[1]   # the inside stage keeps the prompt's padding:
    width = length - (n - k)                  # the one-image row is the longest after it
    assert r.lengths == (length, width) and r.prefills == 2
    cache = out.past_key_values
    assert {layer.keys.shape[2] for layer in cache.layers} == {width}
    assert gen.shape == (2, length + 3)
    assert "forward" not in model.__dict__ and not model._forward_pre_hooks   # all undone


def test_inside_stage_refuses_before_only_methods_and_bad_layers():
    tiny, model, inputs = setup("llava_clip")
    with pytest.raises(UsageError, match="stage"):
        with vlm.prune(model, "visionzip", keep=0.25, stage="inside"):
            pass
    with pytest.raises(UsageError, match="out of range"):
        with vlm.prune(model, "fastv", keep=0.25, stage="inside", layer=99):
            pass
    with vlm.prune(model, "fastv", keep=0.25, stage="inside", layer=0):   # usable again
        model(**inputs)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_the_default_method_runs_on_every_class(kind):
    tiny, model, inputs = setup(kind)
    assert vlm.get_method("default").name == vlm.DEFAULT_METHOD
    with vlm.prune(model, "default", keep=0.25) as r:
        gen = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    k = keep_count(0.25, tiny.tokens_per_image)
    assert [len(rec.kept) for rec in r.last] == [k] * len(r.last) and len(r.last) == 3
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize("name", sorted(vlm.METHODS))
@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_every_method_on_every_class_or_a_one_line_refusal(kind, name):
    """Each method, at its first stage, on each class: exact budget per image and a
    shortened prompt, or (a method needing what the class cannot give) a one-line error
    at the with."""
    tiny, model, inputs = setup(kind)
    method = vlm.get_method(name)
    if name == "learned":   # the shipped look head fits the small VLM: one of this width
        torch.manual_seed(0)
        method = Learned(head=LookHead(model.get_input_embeddings().embedding_dim, 16, 2))
    stage = "before" if "before" in method.stages else "inside"
    layer = 0 if stage == "inside" else None
    missing = method.needs - adapter_for(model).provides if stage == "before" else set()
    if missing:
        with pytest.raises(UsageError) as info:
            with vlm.prune(model, method, count=3, stage=stage, layer=layer):
                pass
        assert "\n" not in str(info.value) and name in str(info.value)
        return
    with vlm.prune(model, method, count=3, stage=stage, layer=layer) as r:
        gen = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert r.last and all(len(rec.kept) == min(3, rec.tokens) for rec in r.last)
    assert r.lengths[1] < r.lengths[0] and gen.shape[1] == inputs["input_ids"].shape[1] + 1
