"""Training aids of the small VLM: LoRA adapters (wrap, save, merge), standardised features
folded into the projector, the projector's output scale (tiny models, no downloads)."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def processor():
    from tokensieve.models.llava_small import build_processor

    return build_processor()


def _tiny_vlm(processor):
    from test_vlm_small import build_tiny_vlm

    return build_tiny_vlm(processor)


def _logits(model, ids):
    with torch.no_grad():
        return model.model.language_model(input_ids=ids).last_hidden_state


def test_lora_starts_as_the_identity_then_merges_into_the_same_function(processor):
    from tokensieve.models.lora import (
        LoRALinear,
        add_lora,
        lora_state,
        merge_lora,
        remove_lora,
    )

    model = _tiny_vlm(processor)
    ids = torch.randint(0, 1000, (2, 12))
    plain = _logits(model, ids)
    params = add_lora(model.model.language_model, 4, seed=1)
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 3 and len(params) == 2 * len(wrapped)  # q/v/o of 2 layers
    torch.testing.assert_close(_logits(model, ids), plain, rtol=0, atol=0)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.3)
    adapted = _logits(model, ids)
    assert (adapted - plain).abs().max() > 1e-2
    fresh = _tiny_vlm(processor)
    assert merge_lora(fresh.model.language_model, lora_state(model.model.language_model)) == 6
    assert not any(isinstance(m, LoRALinear) for m in fresh.modules())
    torch.testing.assert_close(_logits(fresh, ids), adapted, rtol=1e-4, atol=1e-4)
    remove_lora(model.model.language_model)  # folded in place: plain layers, same function
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(_logits(model, ids), adapted, rtol=1e-4, atol=1e-4)


def test_merge_refuses_adapters_of_another_shape(processor):
    from tokensieve.models.lora import add_lora, lora_state, merge_lora

    model = _tiny_vlm(processor)
    add_lora(model.model.language_model, 2)
    state = lora_state(model.model.language_model)
    key = next(k for k in state if k.endswith("q_proj.A"))
    state[key] = torch.zeros(2, 7)
    with pytest.raises(ValueError, match="q_proj"):
        merge_lora(_tiny_vlm(processor).model.language_model, state)
    with pytest.raises(ValueError, match="rank"):
        add_lora(model.model.language_model, 0)


def test_standardised_projector_folds_into_one_that_reads_raw_features(processor):
    from tokensieve.models.llava_small import projector_state

    model = _tiny_vlm(processor)
    raw = torch.randn(3, 256, 24) * torch.linspace(0.1, 30, 24) + torch.linspace(-5, 5, 24)
    mean, std = raw.reshape(-1, 24).mean(0), raw.reshape(-1, 24).std(0)
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        want = proj((raw - mean) / std)
        folded = projector_state(model, (mean, std))
        proj.load_state_dict({k.split("multi_modal_projector.")[1]: v for k, v in folded.items()})
        got = proj(raw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_output_scale_matches_the_token_embeddings(processor):
    from tokensieve.bench.vlm_train import match_output_scale

    model = _tiny_vlm(processor)
    sample = torch.randn(4, 256, 24)
    match_output_scale(model, sample)
    with torch.no_grad():
        out = model.model.multi_modal_projector(sample)
    target = model.get_input_embeddings().weight.std()
    assert float(out.std()) == pytest.approx(float(target), rel=1e-3)


def test_saved_lora_and_standardised_projector_load_as_the_trained_model(processor, tmp_path):
    """What a LoRA run saves, ``load_projector`` turns back into the model it trained (plain
    linear layers, raw features in), so generate and pruning see an ordinary Llava."""
    from tokensieve.bench.vlm_train import batch_loss, encode, pack
    from tokensieve.models.llava_small import load_projector, save_projector
    from tokensieve.models.lora import add_lora

    model = _tiny_vlm(processor)
    add_lora(model.model.language_model, 4, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    feats = torch.randn(2, 256, 24) * 4 + 1
    mean, std = feats.reshape(-1, 24).mean(0), feats.reshape(-1, 24).std(0)
    batch = pack([[encode(processor, "What is in this picture?", "bag")],
                  [encode(processor, "What is in this picture?", "coat")]],
                 processor.tokenizer.pad_token_id)
    with torch.no_grad():
        trained = batch_loss(model, (feats - mean) / std, batch[0], batch[1], batch[3], batch[2])
    save_projector(model, tmp_path / "p.safetensors", standardize=(mean, std))
    loaded = _tiny_vlm(processor)
    load_projector(loaded, tmp_path / "p.safetensors")
    with torch.no_grad():
        again = batch_loss(loaded, feats, batch[0], batch[1], batch[3], batch[2])
    assert float(again) == pytest.approx(float(trained), rel=1e-4)


def test_a_lora_step_changes_only_the_projector_and_the_adapters(processor):
    from test_vlm_small import _fake_pools

    from tokensieve.bench.vlm_data import build
    from tokensieve.bench.vlm_train import TrainConfig, TrainState, make_optimizer, train_steps
    from tokensieve.models.lora import add_lora

    model = _tiny_vlm(processor)
    add_lora(model.model.language_model, 2)
    data = build("train", n_single=2, n_grid=2, seed=0, pools=_fake_pools())
    feats = np.random.default_rng(0).standard_normal((4, 256, 24)).astype(np.float16)
    cfg = TrainConfig(batch_size=4, lr=1e-2, warmup=1, steps=1, autocast="none", lora_rank=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, cfg.lr)
    stats = (torch.zeros(24), torch.ones(24) * 2)
    train_steps(model, processor, data, feats, cfg, TrainState(), opt, until=1,
                progress=False, standardize=stats)
    assert opt.param_groups[1]["lr"] == pytest.approx(opt.param_groups[0]["lr"] * 0.2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if "lora_B" in k}  # B left zero: the adapters did not train
    assert changed <= {k for k in before if k.startswith("model.multi_modal_projector.")
                       or "lora_" in k}
    assert any(k.startswith("model.multi_modal_projector.") for k in changed)


def test_alignment_labels_put_each_token_under_its_quadrants_phrase():
    from test_vlm_small import _fake_pools

    from tokensieve.bench import vlm_data
    from tokensieve.bench.vlm_align import cell_phrases, token_labels

    data = vlm_data.build("train", n_single=3, n_grid=3, seed=0, pools=_fake_pools())
    labels, phrases = token_labels(data)
    assert labels.shape == (6, 256)
    for i, layout in enumerate(data.layouts):
        grid = np.array(phrases)[labels[i]].reshape(16, 16)
        if len(layout) == 1:
            assert (grid == layout[0].word).all()
            continue
        want = cell_phrases(layout)
        assert want[0] == f"top left {layout[0].word}"
        assert (grid[:8, :8] == want[0]).all() and (grid[:8, 8:] == want[1]).all()
        assert (grid[8:, :8] == want[2]).all() and (grid[8:, 8:] == want[3]).all()


def test_alignment_moves_visual_tokens_onto_their_phrases(processor):
    from test_vlm_small import _fake_pools

    from tokensieve.bench import vlm_data
    from tokensieve.bench.vlm_align import align, token_labels, word_embeddings

    model = _tiny_vlm(processor)
    data = vlm_data.build("train", n_single=8, n_grid=8, seed=0, pools=_fake_pools())
    labels, phrases = token_labels(data)
    # features that identify the phrase (plus noise): alignment must learn the map
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((len(phrases), 24))
    feats = (codes[labels] + 0.1 * rng.standard_normal(labels.shape + (24,))).astype(np.float16)
    targets = word_embeddings(model, processor.tokenizer, phrases)
    x = torch.from_numpy(feats.astype(np.float32))

    def mse():
        with torch.no_grad():
            return float(((model.model.multi_modal_projector(x) - targets[labels]) ** 2).mean())

    before = mse()
    out = align(model, processor.tokenizer, data, feats, epochs=30, lr=3e-3,
                batch_images=8, progress=False)
    assert mse() < 0.5 * before
    assert out["token_accuracy"] > 0.8 and out["phrases"] == len(phrases)


def test_init_from_a_saved_file_restores_the_trained_projector_and_adapters(processor,
                                                                          tmp_path):
    """``--init``: a saved (folded, LoRA) file becomes the trainable model it was saved from:
    the projector unfolded to standardised inputs, the adapters trainable again."""
    from tokensieve.bench.vlm_train import init_from
    from tokensieve.errors import UsageError
    from tokensieve.models.llava_small import save_projector
    from tokensieve.models.lora import LoRALinear, add_lora

    model = _tiny_vlm(processor)
    add_lora(model.model.language_model, 4, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    feats = torch.randn(2, 256, 24) * 3 + 1
    mean, std = feats.reshape(-1, 24).mean(0), feats.reshape(-1, 24).std(0)
    save_projector(model, tmp_path / "p.safetensors", standardize=(mean, std))
    fresh = _tiny_vlm(processor)
    init_from(fresh, tmp_path / "p.safetensors", standardize=(mean, std), lora_rank=4, seed=5)
    z = (feats - mean) / std
    with torch.no_grad():
        want = model.model.multi_modal_projector(z)
        got = fresh.model.multi_modal_projector(z)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    ids = torch.randint(0, 1000, (2, 9))
    torch.testing.assert_close(_logits(fresh, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, LoRALinear) for m in fresh.modules())
    assert all(p.requires_grad for n, p in fresh.named_parameters() if "lora_" in n)
    with pytest.raises(UsageError, match="rank 4, not --lora-rank 2"):
        init_from(_tiny_vlm(processor), tmp_path / "p.safetensors", lora_rank=2)
    with pytest.raises(UsageError, match="pass --lora-rank"):
        init_from(_tiny_vlm(processor), tmp_path / "p.safetensors", lora_rank=0)


def test_alignment_loss_is_added_to_the_training_loss_and_favours_the_own_phrase(processor):
    """``--align-weight``: the step's loss is the LM loss plus weight x the alignment loss of
    the projected tokens, which is lower for tokens on their own cell's phrase embedding."""
    from test_vlm_small import _fake_pools

    from tokensieve.bench.vlm_align import AlignmentTargets
    from tokensieve.bench.vlm_data import build
    from tokensieve.bench.vlm_train import batch_loss, encode, pack

    model = _tiny_vlm(processor)
    data = build("train", n_single=1, n_grid=2, seed=0, pools=_fake_pools())
    goal = AlignmentTargets(model, processor.tokenizer, data)
    grid = 1  # the first grid: four phrases "top left ..." .. "bottom right ..."
    own = goal.targets[goal.labels[grid]][None]
    other = goal.targets[goal.labels[grid].flip(0)][None]
    assert goal.loss(own, [grid])[0] < goal.loss(other, [grid])[0]
    assert int(goal.loss(own, [grid])[1].argmax(-1).eq(goal.labels[grid]).sum()) == 256
    feats = torch.randn(1, 256, 24)
    batch = pack([[encode(processor, "What is in this picture?", "bag")]],
                 processor.tokenizer.pad_token_id)
    seen = []

    def aux(projected):
        value = 0.5 * goal.loss(projected, [grid])[0]
        seen.append(float(value))
        return value
    with torch.no_grad():
        plain = batch_loss(model, feats, batch[0], batch[1], batch[3], batch[2])
        both = batch_loss(model, feats, batch[0], batch[1], batch[3], batch[2], aux=aux)
    assert seen and float(both) == pytest.approx(float(plain) + seen[0], rel=1e-5)


def test_the_reading_stage_trains_only_the_adapters_on_phrase_embedding_tokens(processor,
                                                                              monkeypatch):
    """``--read-steps``: the adapters learn on the answer loss of the grids' questions with
    every visual token set to its cell's phrase embedding (no features, no projector); the
    projector stays as it was."""
    from test_vlm_small import _fake_pools

    from tokensieve.bench import vlm_train as T
    from tokensieve.bench.vlm_align import AlignmentTargets
    from tokensieve.bench.vlm_data import build
    from tokensieve.models.lora import add_lora

    model = _tiny_vlm(processor)
    add_lora(model.model.language_model, 2)
    data = build("train", n_single=2, n_grid=2, seed=0, pools=_fake_pools())
    goal = AlignmentTargets(model, processor.tokenizer, data)
    cfg = T.TrainConfig(batch_size=4, lr=1e-2, warmup=1, steps=50, autocast="none",
                        lora_rank=2, read_steps=2)
    seen = []
    real = T.batch_loss

    def spy(model_, features, *args, projected=False, **kw):
        seen.append((features.clone(), projected))
        return real(model_, features, *args, projected=projected, **kw)
    monkeypatch.setattr(T, "batch_loss", spy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = T.read_stage(model, processor, data, cfg, progress=False)
    assert out["steps"] == 2 and len(out["loss_curve"]) == 1 and len(seen) == 2
    grids = [i for i, lay in enumerate(data.layouts) if len(lay) == 4]   # it reads grids only
    images = [grids[i] for i in T.batch_indices(0, 4, len(grids), cfg.seed)]  # rows in order
    first, projected = seen[0]
    assert projected
    assert torch.equal(first, goal.targets[goal.labels[torch.as_tensor(images)]])
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)


def test_read_steps_need_adapters_and_change_the_run_key():
    from tokensieve.bench.vlm_train import TrainConfig
    from tokensieve.errors import UsageError

    with pytest.raises(UsageError, match="--read-steps trains the language model's adapters"):
        TrainConfig(read_steps=10).check()
    a, b = TrainConfig(lora_rank=8), TrainConfig(lora_rank=8, read_steps=10)
    assert a.run_key("k") != b.run_key("k")
