"""The small VLM: processor, question data, projector training and scoring (tiny models)."""

import numpy as np
import pytest
import torch

from tokensieve.bench import vlm_data as D
from tokensieve.bench.vision_data import ImageSet
from tokensieve.errors import UsageError

# --------------------------------------------------------------------------- data


def _fake_pools(n_fashion=200, n_easy=240):
    """Pools whose every image is a distinct flat colour (so a cell shows which source)."""
    def pool(n, size, classes, name):
        colours = (np.arange(n) + (name == "easy_vqa") * 4096 + 1) * 40503 % 2 ** 24
        rgb = np.stack([(colours >> s) & 255 for s in (16, 8, 0)], 1).astype(np.uint8)
        images = np.broadcast_to(rgb[:, None, None, :], (n, size, size, 3)).copy()
        return ImageSet(images, np.arange(n) % len(classes), list(classes), name)

    from tokensieve.bench.vision_data import EASY_VQA_CLASSES, FASHION_MNIST_CLASSES

    return {"fashion_mnist": pool(n_fashion, 28, FASHION_MNIST_CLASSES, "fashion_mnist"),
            "easy_vqa": pool(n_easy, 64, EASY_VQA_CLASSES, "easy_vqa")}


def test_grids_put_each_source_in_its_corner_and_answers_match():
    pools = _fake_pools()
    data = D.build("train", n_single=5, n_grid=40, seed=1, pools=pools)
    assert data.counts()["single"] == 5 and data.counts()["corner_what"] == 40
    for ex in data.examples:
        layout = data.layouts[ex.image]
        img = data.image(ex.image)
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8
        colours = [pools[s.dataset].images[s.index][0, 0] for s in layout]
        if ex.qtype == "single":
            assert (img == colours[0]).all() and ex.answer == layout[0].word
            continue
        for colour, (y, x) in zip(colours, D.CORNER_OFFSETS, strict=True):
            assert (img[y:y + 112, x:x + 112] == colour).all()
        words = [s.word for s in layout]
        if ex.qtype == "corner_what":
            corner = next(c for c in D.CORNERS if c.replace(" ", "-") in ex.question)
            assert ex.answer == words[D.CORNERS.index(corner)]
        elif ex.qtype == "corner_which":
            word = ex.question.removeprefix("Which corner shows ").removesuffix("?")
            word = word.split(" ", 1)[1]
            assert words.count(word) == 1 and ex.answer == D.CORNERS[words.index(word)]
        else:
            group = ex.question.removeprefix("How many of the four are ").removesuffix("?")
            expected = {"clothes": D.GROUPS["clothes"], "shoes": D.GROUPS["shoes"]}
            n = sum(s.dataset == "easy_vqa" if group == "shapes" else s.word in expected[group]
                    for s in layout)
            assert ex.answer == D.NUMBERS[n]
    # all four grid question types and several answers occur
    assert {e.qtype for e in data.examples} == set(D.QTYPES)
    assert len({e.answer for e in data.examples if e.qtype == "count"}) >= 3


def test_every_question_mode_keeps_the_images_and_asks_all_grid_questions():
    pools = _fake_pools()
    one = D.build("train", n_single=3, n_grid=30, seed=2, pools=pools)
    every = D.build("train", n_single=3, n_grid=30, seed=2, pools=pools, questions="all")
    assert every.layouts == one.layouts and every.key() == one.key()  # same images, features
    assert set(one.examples) <= set(every.examples)
    for image, layout in enumerate(every.layouts):
        asked = [e for e in every.examples if e.image == image]
        if len(layout) == 1:
            assert [e.qtype for e in asked] == ["single"]
            continue
        words = [s.word for s in layout]
        assert sorted(e.answer for e in asked if e.qtype == "corner_what") == sorted(words)
        assert sorted(e.answer for e in asked if e.qtype == "corner_which") == sorted(
            D.CORNERS[i] for i, w in enumerate(words) if words.count(w) == 1)
        assert len([e for e in asked if e.qtype == "count"]) == len(D.COUNT_GROUPS)
    with pytest.raises(UsageError, match="questions must be one of"):
        D.build("train", 1, 1, pools=pools, questions="some")


def test_fashion_words_and_easy_words():
    pools = _fake_pools()
    data = D.build("dev", n_single=60, n_grid=0, seed=0, pools=pools)
    for (s,), ex in zip(data.layouts, data.examples, strict=True):
        label = pools[s.dataset].class_names[int(pools[s.dataset].labels[s.index])]
        words = {"Ankle boot": "ankle boot", "T-shirt/top": "t-shirt", "Trouser": "trousers"}
        assert ex.answer == words.get(label, label.lower())
    assert {e.answer for e in data.examples} >= {"ankle boot", "t-shirt", "sneaker"}


def test_splits_share_no_source_image_and_are_reproducible():
    pools = _fake_pools()
    built = {s: D.build(s, n_single=80, n_grid=80, seed=2, pools=pools) for s in D.SPLITS}
    used = {s: d.sources() for s, d in built.items()}
    assert not used["train"] & used["dev"]
    assert not used["train"] & used["test"]
    assert not used["dev"] & used["test"]
    again = D.build("dev", n_single=80, n_grid=80, seed=2, pools=pools)
    assert again.examples == built["dev"].examples and again.key() == built["dev"].key()
    assert D.build("dev", 80, 80, seed=3, pools=pools).key() != built["dev"].key()
    # the split itself: disjoint, complete, stratified 80 / 10 / 10
    labels = np.arange(1000) % 10
    parts = D.split_sources(labels, seed=0)
    allidx = np.concatenate(list(parts.values()))
    assert len(allidx) == len(set(allidx.tolist())) == 1000
    assert [len(parts[s]) for s in D.SPLITS] == [800, 100, 100]


def test_build_rejects_bad_settings():
    from tokensieve.errors import UsageError

    with pytest.raises(UsageError, match="split must be one of"):
        D.build("eval", pools=_fake_pools())
    with pytest.raises(UsageError, match="at most"):
        D.build("train", n_single=10**9, pools=_fake_pools())


@pytest.mark.parametrize("text,expected", [
    ("The Top-Right.", "top right"), ("It is a sneaker", "sneaker"), ("2", "two"),
    ("red circle\nmore", "red circle"), ("  T-shirt!", "t-shirt"), ("an ankle boot", "ankle boot"),
])
def test_normalise_answer(text, expected):
    assert D.normalise_answer(text) == expected


def test_score_per_type_with_chance():
    from tokensieve.bench.vlm_eval import score

    ex = [D.Example(0, "single", "q", "bag"), D.Example(1, "single", "q", "bag"),
          D.Example(2, "single", "q", "coat"), D.Example(3, "corner_which", "q", "top left")]
    s = score(ex, ["Bag.", "coat", "coat", "top-left"])
    assert (s["single"].correct, s["single"].n) == (2, 3)
    assert s["single"].chance == pytest.approx(2 / 3)
    assert s["corner_which"].accuracy == 1.0 and s["corner"].n == 1
    assert s["all"].correct == 3 and s["all"].chance == pytest.approx(3 / 4)


# --------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def processor():
    from tokensieve.models.llava_small import build_processor

    return build_processor()


@pytest.fixture(scope="module")
def tiny_vlm(processor):
    return build_tiny_vlm(processor)


def build_tiny_vlm(processor):
    """A tiny random DINOv2 + Llama joined as the small VLM is (real tokenizer)."""
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    from tokensieve.models.llava_small import assemble

    torch.manual_seed(0)
    tok = processor.tokenizer
    vision = Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=48, patch_size=14, image_size=224))
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=2,
        initializer_range=0.3))  # large enough that the context changes the loss
    return assemble(vision.eval(), lm.eval(), tok, seed=0)


@pytest.mark.model
def test_processor_expands_one_image_to_256_tokens(processor):
    from tokensieve.models.llava_small import IMAGE_TOKEN

    msgs = [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "What is in this picture?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt == ("<|im_start|>user\n<image>\nWhat is in this picture?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    img = np.zeros((224, 224, 3), np.uint8)
    img[:, :112] = 255
    out = processor(images=[img], text=[prompt], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((out["input_ids"] == image_id).sum()) == 256
    assert out["input_ids"][0, 0].item() == processor.tokenizer.convert_tokens_to_ids(
        "<|im_start|>")  # no extra BOS before the template's own
    px = out["pixel_values"]
    assert px.shape == (1, 3, 224, 224)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(px[0, :, 0, 0].numpy(), (1 - mean) / std, atol=1e-4)
    np.testing.assert_allclose(px[0, :, 0, -1].numpy(), -mean / std, atol=1e-4)


@pytest.mark.model
def test_encode_gives_the_processors_ids(processor):
    from tokensieve.bench.vlm_train import encode

    ids, n_prompt = encode(processor, "Which corner shows a bag?", "top left")
    text = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Which corner shows a bag?"}]}],
        add_generation_prompt=True)
    ref = processor(images=[np.zeros((224, 224, 3), np.uint8)], text=[text],
                    return_tensors="pt")["input_ids"][0].tolist()
    assert ids[:n_prompt] == ref
    assert processor.tokenizer.decode(ids[n_prompt:]) == "top left<|im_end|>"


@pytest.mark.model
def test_cached_features_are_what_llava_projects(tiny_vlm, processor):
    from tokensieve.bench.vlm_train import vision_features

    img = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    px = processor.image_processor(list(img), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours = tiny_vlm.model.multi_modal_projector(vision_features(tiny_vlm, px))
        ref = tiny_vlm.get_image_features(pixel_values=px, vision_feature_layer=-1,
                                          vision_feature_select_strategy="default").pooler_output
    assert ours.shape == (2, 256, 32)
    torch.testing.assert_close(ours, torch.stack(list(ref)))


@pytest.mark.model
def test_one_step_lowers_the_batch_loss_and_changes_only_the_projector(tiny_vlm, processor):
    from tokensieve.bench.vlm_train import (
        TrainConfig,
        TrainState,
        batch_loss,
        encode,
        make_optimizer,
        pack,
        questions_by_image,
        train_steps,
    )

    data = D.build("train", n_single=2, n_grid=2, seed=0, pools=_fake_pools())
    feats = np.random.default_rng(0).standard_normal((4, 256, 24)).astype(np.float16)
    cfg = TrainConfig(batch_size=4, lr=1e-2, warmup=1, steps=1, autocast="none")
    groups = questions_by_image(data)
    batch = pack([[encode(processor, e.question, e.answer) for e in g] for g in groups],
                 processor.tokenizer.pad_token_id)
    f = torch.from_numpy(feats.astype(np.float32))
    before = {k: v.clone() for k, v in tiny_vlm.state_dict().items()}
    with torch.no_grad():
        loss0 = batch_loss(tiny_vlm, f, batch[0], batch[1], batch[3], batch[2]).item()
    state = train_steps(tiny_vlm, processor, data, feats, cfg, TrainState(),
                        make_optimizer(tiny_vlm, cfg.lr), until=1, progress=False)
    with torch.no_grad():
        loss1 = batch_loss(tiny_vlm, f, batch[0], batch[1], batch[3], batch[2]).item()
    assert state.step == 1 and state.examples == len(data.examples)
    assert state.losses[0] == pytest.approx(loss0, rel=1e-5)  # the same 4 images, packed
    assert loss1 < loss0
    after = tiny_vlm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("model.multi_modal_projector.")}


@pytest.mark.model
def test_packed_questions_give_the_unpacked_loss(tiny_vlm, processor):
    """Three questions after one image in one row = three rows of image + question."""
    from tokensieve.bench.vlm_train import batch_loss, collate, encode, pack

    data = D.build("train", n_single=1, n_grid=2, seed=4, pools=_fake_pools())
    feats = torch.randn(3, 256, 24, generator=torch.Generator().manual_seed(1))
    enc = [encode(processor, e.question, e.answer) for e in data.examples]
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        ids, mask, labels = collate(enc, pad)
        flat = batch_loss(tiny_vlm, feats[[e.image for e in data.examples]], ids, mask, labels)
        groups = [[enc[i] for i, e in enumerate(data.examples) if e.image == k] for k in range(3)]
        assert [len(g) for g in groups] == [1, 3, 3]
        p_ids, p_mask, pos, p_labels = pack(groups, pad)
        assert p_ids.shape[1] < ids.shape[1] * 2 and (p_labels != -100).sum() == (
            labels != -100).sum()
        packed = batch_loss(tiny_vlm, feats, p_ids, p_mask, p_labels, pos)
        tiny_vlm.model.language_model.config._attn_implementation = "eager"
        try:
            e_ids, e_mask, e_pos, e_labels = pack(groups, pad, sdpa=False)
            eager = batch_loss(tiny_vlm, feats, e_ids, e_mask, e_labels, e_pos)
        finally:
            tiny_vlm.model.language_model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(packed, flat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager, flat, rtol=1e-5, atol=1e-5)


def test_batches_follow_a_seeded_permutation_per_epoch():
    from tokensieve.bench.vlm_train import batch_indices

    seen = np.concatenate([batch_indices(s, 3, 6, seed=5) for s in range(4)])
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:12]) == list(range(6))
    assert (batch_indices(2, 3, 6, seed=5) == seen[6:9]).all()
    assert not (batch_indices(0, 6, 6, seed=6) == seen[:6]).all()


@pytest.mark.model
def test_projector_round_trip_and_wrong_file(tiny_vlm, tmp_path):
    from safetensors.torch import save_file

    from tokensieve.errors import ModelNotFoundError
    from tokensieve.models.llava_small import load_projector, projector_state, save_projector

    save_projector(tiny_vlm, tmp_path / "p.safetensors")
    state = projector_state(tiny_vlm)
    with torch.no_grad():
        tiny_vlm.model.multi_modal_projector.linear_1.weight.add_(1.0)
    load_projector(tiny_vlm, tmp_path / "p.safetensors")
    for k, v in projector_state(tiny_vlm).items():
        assert torch.equal(v, state[k])
    save_file({"x": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelNotFoundError, match="not a projector"):
        load_projector(tiny_vlm, tmp_path / "bad.safetensors")
    with pytest.raises(ModelNotFoundError, match="tokensieve vlm train"):
        load_projector(tiny_vlm, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be"), (["--time-limit", "-5"], "--time-limit must be"),
    (["--batch-size", "100000"], "--batch-size must be"), (["--single", "0", "--grids", "0"],
                                                           "at least one image"),
    (["--init", "/nonexistent/p.safetensors"], "--init /nonexistent/p.safetensors: no such"),
    (["--steps", "10", "--stop-after", "20"], "--stop-after must be 1..--steps (10)"),
    (["--read-steps", "5", "--lora-rank", "0"], "--read-steps trains the language model's"),
])
def test_vlm_train_rejects_bad_settings_in_one_line(argv, message, capsys):
    from tokensieve.cli import main

    assert main(["vlm", "train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.model
def test_a_resumed_run_continues_exactly(tiny_vlm, processor, tmp_path):
    from tokensieve.bench import vlm_train as T

    data = D.build("train", n_single=3, n_grid=3, seed=0, pools=_fake_pools())
    feats = np.random.default_rng(1).standard_normal((6, 256, 24)).astype(np.float16)
    cfg = T.TrainConfig(batch_size=2, lr=1e-2, warmup=1, steps=3, autocast="none")
    start = {k: v.clone() for k, v in tiny_vlm.model.multi_modal_projector.state_dict().items()}

    def run(stop_after):
        tiny_vlm.model.multi_modal_projector.load_state_dict(start)
        opt = T.make_optimizer(tiny_vlm, cfg.lr)
        state = T.train_steps(tiny_vlm, processor, data, feats, cfg, T.TrainState(), opt,
                              until=stop_after, progress=False)
        if stop_after < cfg.steps:
            T._save_checkpoint(tmp_path / "ck.pt", tiny_vlm, opt, state)
            tiny_vlm.model.multi_modal_projector.load_state_dict(start)  # a fresh process
            opt = T.make_optimizer(tiny_vlm, cfg.lr)
            state = T._load_checkpoint(tmp_path / "ck.pt", tiny_vlm, opt)
            state = T.train_steps(tiny_vlm, processor, data, feats, cfg, state, opt,
                                  until=cfg.steps, progress=False)
        return state, {k: v.clone() for k, v in
                       tiny_vlm.model.multi_modal_projector.state_dict().items()}

    straight, w1 = run(3)
    resumed, w2 = run(1)
    assert straight.losses == resumed.losses and straight.step == resumed.step == 3
    for k in w1:
        assert torch.equal(w1[k], w2[k])
    tiny_vlm.model.multi_modal_projector.load_state_dict(start)


@pytest.mark.model
def test_batched_answers_equal_one_by_one_and_are_scored(tiny_vlm, processor):
    from tokensieve.bench.vlm_eval import answer, evaluate

    data = D.build("dev", n_single=1, n_grid=1, seed=0, pools=_fake_pools())
    imgs = data.images([e.image for e in data.examples])
    qs = [e.question for e in data.examples]
    batched = answer(tiny_vlm, processor, imgs, qs, max_new_tokens=4)
    alone = [answer(tiny_vlm, processor, imgs[i:i + 1], qs[i:i + 1], max_new_tokens=4)[0]
             for i in range(len(qs))]
    assert batched == alone and len(set(map(len, qs))) > 1  # different left padding
    result = evaluate(tiny_vlm, processor, data, batch_size=3, max_new_tokens=4,
                      progress=False)
    assert [p["predicted"] for p in result.predictions] == batched
    assert result.scores["all"].n == len(data.examples) == 4
    assert set(result.to_dict()["types"]) == {*D.QTYPES, "corner", "all"}


@pytest.mark.model
def test_the_shipped_small_vlm_loads_and_answers():
    from tokensieve.bench.vlm_eval import answer
    from tokensieve.models.llava_small import (
        PROJECTOR_FILE,
        load_small_vlm,
        projector_state,
        training_record,
    )

    assert PROJECTOR_FILE.stat().st_size < 8 << 20  # projector + LoRA adapters, float32
    record = training_record()
    # the first stage's loss fell (the reading stage's when there is one: the main stage's
    # logged loss adds the alignment term, which rises as the projector leaves its targets)
    first = record.get("read", {}).get("loss_curve") or record["loss_curve"]
    curve = [loss for _, loss in first]
    assert record["steps_done"] > 0 and record["finished"] and curve[-1] < 0.5 * curve[0]
    model, processor = load_small_vlm()
    from safetensors.torch import load_file

    shipped = load_file(str(PROJECTOR_FILE))
    assert all(torch.equal(v, shipped[k]) for k, v in projector_state(model).items())
    assert all(not p.requires_grad for p in model.model.language_model.parameters())
    img = np.zeros((224, 224, 3), np.uint8)
    (text,) = answer(model, processor, [img], [D.SINGLE_QUESTION], max_new_tokens=4)
    assert isinstance(text, str) and text.strip()


def test_run_keys_and_provenance_of_an_init_run(tmp_path):
    """A run on other questions or from another start never resumes this one's checkpoint,
    and its record names the file it started from, with that file's own record."""
    import hashlib
    import json

    from tokensieve.bench import vlm_train as T

    base = T.TrainConfig()
    first = tmp_path / "a" / T.PROJECTOR_NAME
    first.parent.mkdir()
    first.write_bytes(b"weights-a")
    (first.parent / T.RECORD_NAME).write_text(json.dumps({"steps_done": 420}))
    other = tmp_path / "b.safetensors"
    other.write_bytes(b"weights-b")
    keys = {T.TrainConfig(**kw).run_key("d") for kw in
            ({}, {"questions": "all"}, {"init": str(first)}, {"init": str(other)})}
    assert len(keys) == 4 and base.run_key("d") == T.TrainConfig(steps=9).run_key("d")
    prov = T.init_provenance(first)
    assert prov == {"file": T.PROJECTOR_NAME, "record": {"steps_done": 420},
                    "sha256": hashlib.sha256(b"weights-a").hexdigest()}
    assert "record" not in T.init_provenance(other)
