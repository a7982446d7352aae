"""tokensieve.train.selective_loss on tiny random models: the ordinary loss at keep 1.0,
gradients and head rows only at the selected tokens, each method's selection rule."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tokensieve.engine.budget import keep_count
from tokensieve.errors import InputError, UsageError
from tokensieve.train import causal_lm_loss, selective_loss, token_frequencies, token_losses

V, H = 300, 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 12), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100                # a prompt that is not learned
    labels[2, 9:] = -100                # padding at the end
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class CountingHead(torch.nn.Linear):
    """An LM head that records the rows it runs on, with / without gradients."""

    def __init__(self):
        super().__init__(H, V, bias=False)
        torch.nn.init.normal_(self.weight, std=0.5)
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return super().forward(x)

    def rows(self, grad):
        return sum(n for n, g in self.calls if g == grad)


def hidden_batch(seed=2, b=3, t=10):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[1, :3] = -100
    return hidden, labels


@pytest.mark.parametrize("method", ["all", "eslm"])
def test_keep_one_is_the_ordinary_loss(model, batch, method):
    with torch.no_grad():
        out = model(**batch)
    res = selective_loss(out.logits, batch["labels"], method, 1.0)
    assert res.kept == res.labelled == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(res.loss, out.loss, atol=1e-6)
    # through the body and the head, as the trainer runs it
    with torch.no_grad():
        res2, _ = causal_lm_loss(model, batch, method, 1.0)
    assert torch.allclose(res2.loss, out.loss, atol=1e-5)


def test_gradients_and_head_rows_only_at_selected_tokens():
    hidden, labels = hidden_batch()
    head = CountingHead()
    res = selective_loss(hidden, labels, "eslm", 0.4, head=head)
    res.loss.backward()
    n = int((labels[:, 1:] != -100).sum())
    assert res.kept == keep_count(0.4, n) < n
    # the head ran with gradients on the kept rows only, and without on every labelled row
    assert head.rows(grad=True) == res.kept == res.head_rows
    assert head.rows(grad=False) == n == res.scored_rows
    # hidden[b, t] predicts labels[b, t + 1]: its gradient is nonzero exactly where kept
    nonzero = hidden.grad.abs().sum(-1) > 0
    expected = torch.zeros_like(nonzero)
    expected[:, :-1] = res.mask[:, 1:]
    assert torch.equal(nonzero, expected)


@pytest.mark.parametrize("method", ["eslm", "qtuning:samples=0.5", "random"])
def test_select_only_gives_the_same_selection_and_loss_without_running_the_head_again(method):
    """A first (selection) pass: a method that scored the losses reuses them for the kept
    tokens; one that did not (random) still runs the head on its kept rows."""
    hidden, labels = hidden_batch()
    full_head, sel_head = CountingHead(), CountingHead()
    sel_head.weight.data.copy_(full_head.weight.data)
    with torch.no_grad():
        full = selective_loss(hidden, labels, method, 0.4, head=full_head)
        sel = selective_loss(hidden, labels, method, 0.4, head=sel_head, select_only=True)
    assert torch.equal(full.mask, sel.mask) and full.kept == sel.kept
    assert math.isclose(full.loss.item(), sel.loss.item(), rel_tol=1e-5)
    scores = method != "random"
    assert sel.head_rows == (0 if scores else sel.kept) and full.head_rows == full.kept
    assert sum(n for n, _ in sel_head.calls) == sum(n for n, _ in full_head.calls) - \
        (full.kept if scores else 0)


@pytest.mark.parametrize("method", ["random", "all"])
def test_random_and_all_never_score(method):
    hidden, labels = hidden_batch()
    head = CountingHead()
    res = selective_loss(hidden, labels, method, 0.3 if method == "random" else 1.0, head=head)
    assert head.rows(grad=False) == 0 and res.scored_rows == 0
    assert head.rows(grad=True) == res.kept


def test_eslm_keeps_the_highest_losses():
    hidden, labels = hidden_batch()
    head = CountingHead()
    res = selective_loss(hidden, labels, "eslm", 0.6, head=head)
    per_token = token_losses(hidden, labels, head=head)
    valid = torch.zeros_like(res.mask)
    valid[:, 1:] = labels[:, 1:] != -100
    k = keep_count(0.6, int(valid.sum()))
    assert res.kept == k
    # every kept loss is above every dropped one (the value-at-risk threshold)
    assert per_token[res.mask].min() > per_token[valid & ~res.mask].max()
    # the loss is the mean over the kept tokens (a CVaR), with grad
    assert torch.allclose(res.loss, per_token[res.mask].mean(), atol=1e-5)
    # from logits the selection is the same, and chunking the scoring pass changes nothing
    logits = hidden.detach() @ head.weight.detach().T
    assert torch.equal(selective_loss(logits, labels, "eslm", 0.6).mask, res.mask)
    again = selective_loss(hidden, labels, "eslm", 0.6, head=head, chunk_rows=1)
    assert torch.equal(again.mask, res.mask)


def test_eslm_entropy_signal():
    hidden, labels = hidden_batch()
    head = CountingHead()
    res = selective_loss(hidden, labels, "eslm:signal=entropy", 0.5, head=head)
    logp = F.log_softmax(hidden.detach() @ head.weight.detach().T, -1)[:, :-1]
    ent = torch.zeros(labels.shape)
    ent[:, 1:] = -(logp.exp() * logp).sum(-1)
    valid = torch.zeros_like(res.mask)
    valid[:, 1:] = labels[:, 1:] != -100
    assert ent[res.mask].min() > ent[valid & ~res.mask].max()


def test_random_is_seeded():
    hidden, labels = hidden_batch()
    logits = hidden.detach() @ torch.randn(V, H).T
    a = selective_loss(logits, labels, "random", 0.5, seed=3)
    b = selective_loss(logits, labels, "random", 0.5, seed=3)
    c = selective_loss(logits, labels, "random", 0.5, seed=4)
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert a.kept == c.kept == keep_count(0.5, a.labelled)
    assert not bool(a.mask[:, 0].any()) and not bool(a.mask[1, :3].any())  # never unlabelled


def test_excess_picks_the_largest_excess_loss():
    hidden, labels = hidden_batch()
    head = CountingHead()
    own = token_losses(hidden, labels, head=head)
    g = torch.Generator().manual_seed(5)
    ref = own + torch.randn(own.shape, generator=g) * 2     # reorders the tokens
    res = selective_loss(hidden, labels, "excess", 0.5, head=head, reference=ref)
    excess = own - ref
    valid = torch.zeros_like(res.mask)
    valid[:, 1:] = labels[:, 1:] != -100
    assert excess[res.mask].min() > excess[valid & ~res.mask].max()
    by_loss = selective_loss(hidden, labels, "eslm", 0.5, head=head)
    assert not torch.equal(by_loss.mask, res.mask)
    # reference logits give the same selection as their per-token losses
    ref_logits = torch.randn(*labels.shape, V, generator=g)
    a = selective_loss(hidden, labels, "excess", 0.5, head=head, reference=ref_logits)
    b = selective_loss(hidden, labels, "excess", 0.5, head=head,
                       reference=token_losses(ref_logits, labels))
    assert torch.equal(a.mask, b.mask)


def test_pdl_weights_follow_the_power_law():
    hidden, labels = hidden_batch()
    head = CountingHead()
    freq = torch.arange(V) * 3
    res = selective_loss(hidden, labels, "pdl:alpha=0.7", head=head, frequencies=freq)
    valid = torch.zeros_like(res.mask)
    valid[:, 1:] = labels[:, 1:] != -100
    assert torch.equal(res.mask, valid)
    expected = (freq[labels[valid]].double() + 1) ** -0.7
    assert torch.allclose(res.weights[valid].double(), expected, rtol=1e-6)
    assert bool((res.weights[~valid] == 0).all())
    ce = token_losses(hidden, labels, head=head)[valid].double()
    assert math.isclose(res.loss.item(), float((expected * ce).sum() / expected.sum()),
                        rel_tol=1e-5)


def test_token_frequencies():
    f = token_frequencies([[1, 2, 2], torch.tensor([2, 4]), 0], vocab_size=6)
    assert f.tolist() == [1, 1, 3, 0, 1, 0]
    with pytest.raises(InputError, match="outside the vocabulary"):
        token_frequencies([[7]], vocab_size=6)


def _row(target, peak, where=None, v=5):
    """Logits predicting ``target``: ``peak`` on token ``where`` (default: the target)."""
    row = torch.zeros(v)
    row[target if where is None else where] = peak
    return row


def _qtuning_batch():
    """Four samples of 4 learned tokens (vocab 5), one per quadrant:
    0 misconception: confident and wrong (high loss, low entropy), losses differ by token;
    1 calibration: uniform (low loss, high entropy); 2 noise: unsure and wrong (high, high);
    3 redundant: confident and right (low, low)."""
    labels = torch.zeros(4, 5, dtype=torch.long)
    labels[:, 1:] = torch.tensor([1, 2, 3, 4])
    logits = torch.zeros(4, 5, 5)
    for t in range(4):
        target = int(labels[0, t + 1])
        wrong = (target + 1) % 5
        logits[0, t] = _row(target, [8.0, 10.0, 7.0, 9.0][t], wrong)
        logits[1, t] = torch.zeros(5)
        logits[2, t] = _row(target, -3.0)
        logits[3, t] = _row(target, 6.0)
    return logits, labels


def test_qtuning_quadrants_on_a_hand_built_batch():
    logits, labels = _qtuning_batch()
    res = selective_loss(logits, labels, "qtuning:samples=0.5", 0.5)
    assert res.info["quadrant"] == ["misconception", "calibration", "noise", "redundant"]
    # calibration kept whole, misconception pruned to its 2 highest-loss tokens (peaks 10, 9)
    assert res.mask[1, 1:].all() and not res.mask[2:].any()
    assert res.mask[0].tolist() == [False, False, True, False, True]
    # only the off-diagonal quadrants are ever kept, whatever the sample keep
    full = selective_loss(logits, labels, "qtuning:samples=1.0", 1.0)
    assert full.mask[:2, 1:].all() and not full.mask[2:].any()
    one = selective_loss(logits, labels, "qtuning:samples=0.25", 0.5)
    assert one.mask[0].sum() == 2 and not one.mask[1:].any()
    # the decision of a sample does not depend on its place in the batch
    perm = torch.tensor([3, 1, 0, 2])
    moved = selective_loss(logits[perm], labels[perm], "qtuning:samples=0.5", 0.5)
    assert torch.equal(moved.mask, res.mask[perm])
    # context mixes the neighbours' losses into the token score
    ctx = selective_loss(logits, labels, "qtuning:samples=0.5,context=1.0", 0.5)
    assert ctx.mask[0].tolist() != res.mask[0].tolist()


def test_qtuning_on_the_diagonal_prunes_tokens_of_every_sample():
    logits, labels = _qtuning_batch()
    # noise and redundant only (error and uncertainty in the same order), then one sample
    for rows in ([2, 3], [0]):
        res = selective_loss(logits[rows], labels[rows], "qtuning", 0.5)
        assert res.info["quadrant"] == ["unplaced"] * len(rows)
        assert res.mask.sum(1).tolist() == [2] * len(rows)
    assert res.mask[0].tolist() == [False, False, True, False, True]   # the highest losses


@pytest.mark.parametrize("call, error, text", [
    (lambda x, y: selective_loss(x, y, "eslm", 0.0), UsageError, "keep"),
    (lambda x, y: selective_loss(x, y, "eslm", 1.5), UsageError, "keep"),
    (lambda x, y: selective_loss(x, y, "eslm", float("nan")), UsageError, "keep"),
    (lambda x, y: selective_loss(x, y, "all", 0.5), UsageError, "every labelled token"),
    (lambda x, y: selective_loss(x, torch.full_like(y, -100)), InputError, "all -100"),
    (lambda x, y: selective_loss(x, y[:, :-1]), InputError, "disagree"),
    (lambda x, y: selective_loss(x[0], y), InputError, "batch, seq"),
    (lambda x, y: selective_loss(x, y + V), InputError, "outside the vocabulary"),
    (lambda x, y: selective_loss(x, y, "nope"), UsageError, "qtuning"),
    (lambda x, y: selective_loss(x, y, "eslm:signal=x"), UsageError, "signal"),
    (lambda x, y: selective_loss(x, y, "excess"), UsageError, "reference"),
    (lambda x, y: selective_loss(x, y, "excess", reference=torch.randn(*y.shape, V - 1)),
     UsageError, "vocabulary"),
    (lambda x, y: selective_loss(x, y, "pdl"), UsageError, "frequencies"),
    (lambda x, y: selective_loss(x, y, "eslm", chunk_rows=0), UsageError, "chunk_rows"),
    (lambda x, y: selective_loss(x, y, "pdl", frequencies=torch.ones(V - 1)), UsageError,
     "one count per vocabulary"),
])
def test_bad_settings_are_one_line_errors(call, error, text):
    hidden, labels = hidden_batch()
    logits = hidden.detach() @ torch.randn(V, H).T
    with pytest.raises(error, match=text) as exc:
        call(logits, labels)
    assert "\n" not in str(exc.value)


def test_reference_model_with_another_vocabulary(model, batch):
    cfg = LlamaConfig(vocab_size=V + 1, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    other = LlamaForCausalLM(cfg).eval()
    with pytest.raises(UsageError, match="vocabulary of 301") as exc:
        causal_lm_loss(model, batch, "excess", 0.5, reference_model=other)
    assert "\n" not in str(exc.value)


def test_soft_capped_head_matches_the_model_loss():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       max_position_embeddings=64, final_logit_softcapping=0.5)
    gemma = Gemma2ForCausalLM(cfg).eval()
    ids = torch.randint(0, V, (2, 10))
    batch = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        capped = gemma(**batch).loss
        res, _ = causal_lm_loss(gemma, batch, "all")
        assert torch.allclose(res.loss, capped, atol=1e-6)
        cfg.final_logit_softcapping = None      # the cap changes the loss: the test can fail
        assert not torch.allclose(gemma(**batch).loss, capped, atol=1e-6)


@pytest.mark.model
def test_embedded_model_keep_one_and_selection(lm):
    model = lm.model
    tok = lm.tokenizer
    ids = tok(["Token-selective training learns from the informative tokens only."],
              return_tensors="pt")["input_ids"]
    batch = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        full = model(**batch).loss
        res, flops = causal_lm_loss(model, batch, "all")
        sel, sflops = causal_lm_loss(model, batch, "eslm", 0.5)
    assert torch.allclose(res.loss, full, atol=1e-4)
    assert sel.kept == keep_count(0.5, ids.shape[1] - 1)
    # the tied 49k-row head is a large share of a step: keeping half saves a visible part
    assert sflops.head_forward * 2 <= flops.head_forward + 1
