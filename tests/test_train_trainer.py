"""SelectiveTrainer (Hugging Face Trainer) and selective_step (plain PyTorch) on a tiny
random Llama: they train, log the kept fraction and FLOPs, and count them right."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from tokensieve.engine.budget import keep_count
from tokensieve.errors import UsageError
from tokensieve.train import (
    ModelShape,
    SelectiveTrainer,
    causal_lm_loss,
    selective_step,
    step_flops,
)

V = 300


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def examples(n=8, t=16):
    g = torch.Generator().manual_seed(7)
    # a learnable pattern: each sequence counts up from a random start
    start = torch.randint(0, V - t, (n, 1), generator=g)
    ids = start + torch.arange(t)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def test_trainer_runs_and_logs(tmp_path):
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             logging_steps=1, learning_rate=1e-2, report_to=[], use_cpu=True,
                             save_strategy="no", seed=0, disable_tqdm=True)
    trainer = SelectiveTrainer(model=model, args=args, train_dataset=examples(),
                               method="eslm", keep=0.5)
    trainer.train()
    logs = [x for x in trainer.state.log_history if "loss" in x]
    assert len(logs) == 2
    assert all(math.isfinite(x["loss"]) for x in logs)
    labelled = 4 * 15
    assert all(x["kept_fraction"] == keep_count(0.5, labelled) / labelled for x in logs)
    shape = ModelShape.from_config(model.config)
    one = step_flops(shape, 4, 16, head_rows=keep_count(0.5, labelled), scored_rows=labelled)
    assert logs[0]["selective_flops"] == one.total and logs[1]["selective_flops"] == 2 * one.total
    assert trainer.flops_spent == 2 * one.total
    # evaluation keeps the ordinary loss over every labelled token
    held = examples(4)
    ev = trainer.evaluate(held)
    batch = {k: torch.stack([d[k] for d in held]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        assert math.isclose(ev["eval_loss"], model.eval()(**batch).loss.item(), rel_tol=1e-5)


def test_selective_step_learns_and_counts():
    model = tiny_model()
    data = examples(4)
    batch = {k: torch.stack([d[k] for d in data]) for k in ("input_ids", "labels")}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = model(**batch).loss.item()
    for step in range(4):
        r = selective_step(model, batch, opt, "random", 0.5, seed=step)
        assert r.kept == keep_count(0.5, 4 * 15) and r.labelled == 60
        # random never scores: the head ran on the kept rows only
        assert r.flops.scored_rows == 0 and r.flops.head_rows == r.kept
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before


def test_trainer_refuses_bad_settings(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(UsageError, match="keep"):
        SelectiveTrainer(model=tiny_model(), args=args, method="eslm", keep=2)
    with pytest.raises(UsageError, match="reference_model"):
        causal_lm_loss(tiny_model(), {"input_ids": torch.zeros(1, 4, dtype=torch.long),
                                      "labels": torch.zeros(1, 4, dtype=torch.long)}, "excess")


def test_qtuning_step_skips_the_samples_it_drops():
    """qtuning drops whole samples: the step trains only the kept ones (a no-grad selection
    pass on the whole batch, then forward + backward of the kept samples), with the same
    loss and gradients as the one-pass loss over the whole batch, and counts both passes
    (the first only scores and selects: its kept tokens' losses come from the scoring)."""
    from tokensieve.train import selective_loss
    from tokensieve.train.model import split_causal_lm

    model = tiny_model()
    data = examples(8)
    batch = {k: torch.stack([d[k] for d in data]) for k in ("input_ids", "labels")}
    batch["labels"][:, :6] = -100           # a prompt part, as in SFT
    spec = "qtuning:samples=0.5"
    res, flops = causal_lm_loss(model, batch, spec, 0.5)
    kept_rows = res.mask.any(dim=1)
    assert res.info["trained_samples"] == int(kept_rows.sum()) == keep_count(0.5, 8)
    res.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    body, head = split_causal_lm(model)
    one = selective_loss(body(input_ids=batch["input_ids"]).last_hidden_state,
                         batch["labels"], spec, 0.5, head=head)
    assert torch.equal(one.mask, res.mask)
    assert math.isclose(one.loss.item(), res.loss.item(), rel_tol=1e-5)
    one.loss.backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)
    shape = ModelShape.from_config(model.config)
    k = int(kept_rows.sum())
    first = step_flops(shape, 8, 16, head_rows=one.kept, scored_rows=one.labelled)
    second = step_flops(shape, k, 16, head_rows=res.kept)
    assert flops.body_forward == first.body_forward + second.body_forward
    assert flops.body_backward == second.body_backward < first.body_backward
    assert flops.scoring == first.scoring   # the first pass only selects: no kept-row head
    assert flops.head_forward == second.head_forward
    # no gradients wanted: one pass, as before
    with torch.no_grad():
        plain, pf = causal_lm_loss(model, batch, spec, 0.5)
    assert "trained_samples" not in plain.info and pf.body_backward == first.body_backward
