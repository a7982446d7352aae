"""A Hugging Face causal LM as a body and a head: run the decoder body for the last hidden
states, then :func:`~tokensieve.train.loss.selective_loss` with the model's output
embeddings as the head, so the vocabulary projection runs only on the selected rows; and
the FLOPs that step spent (:mod:`tokensieve.train.flops`)."""

from __future__ import annotations

import torch

from ..errors import InputError, UsageError
from .flops import ModelShape, StepFlops, step_flops
from .loss import SelectiveLoss, resolve_keep, selective_loss, token_losses
from .methods import TrainMethod, get_method
from .signals import Head

BODY_INPUTS = ("input_ids", "attention_mask", "position_ids")


def split_causal_lm(model) -> tuple[torch.nn.Module, Head]:
    """(decoder body returning hidden states, LM head) of a causal LM. A final logit
    soft-cap (Gemma 2) goes with the head; a logit scale it cannot reproduce is refused."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UsageError(f"{type(model).__name__} has no output embeddings (LM head); give a "
                         "causal LM such as AutoModelForCausalLM.")
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        raise UsageError(f"{type(model).__name__} scales its logits (logit_scale); selective "
                         "training supports heads that are a plain projection (or soft-capped).")
    try:
        body = model.get_decoder()
    except (AttributeError, ValueError):
        body = getattr(model, "base_model", None)
    if body is None or body is model:
        raise UsageError(f"cannot find the decoder body of {type(model).__name__}.")
    return body, Head(head, softcap=getattr(cfg, "final_logit_softcapping", None))


def model_shape(model) -> ModelShape | None:
    """The FLOP-relevant sizes of ``model``, or ``None`` when its config is not Llama-style."""
    try:
        return ModelShape.from_config(model.config)
    except (UsageError, AttributeError):
        return None


def _hidden(body, batch) -> torch.Tensor:
    out = body(**{k: batch[k] for k in BODY_INPUTS if k in batch})
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def causal_lm_loss(model, batch: dict, method: str | TrainMethod = "eslm",
                   keep: float | None = None, *, reference_model=None, frequencies=None,
                   seed: int = 0, chunk_rows: int | None = None, select_only: bool = False
                   ) -> tuple[SelectiveLoss, StepFlops | None]:
    """The selective loss of ``model`` on ``batch`` (``input_ids``, ``labels``, optional
    ``attention_mask`` / ``position_ids``) and the FLOPs of the step (forward, backward, the
    selection pass, the reference's forward; ``None`` for a non-Llama-style config).
    ``reference_model``: a causal LM with the same vocabulary, for ``excess``.

    A method that drops whole samples (``qtuning``) runs in two passes when gradients are on:
    the selection without gradients on the whole batch, then the forward and backward only
    of the samples it kept, so a dropped sample costs one no-grad forward, not a training
    step (the FLOPs count both passes)."""
    m = get_method(method)
    resolve_keep(m, keep)  # fail before any forward
    if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
        raise InputError("the batch must be a dict with input_ids and labels (-100 = ignored).")
    if m.drops_samples and torch.is_grad_enabled():
        return _without_dropped(model, batch, m, keep, reference_model=reference_model,
                                frequencies=frequencies, seed=seed, chunk_rows=chunk_rows)
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    body, head = split_causal_lm(model)
    reference, ref_rows, ref_shape = None, 0, None
    if "reference" in m.needs:
        if reference_model is None:
            raise UsageError(f"method {m.name!r} needs a reference_model (same tokenizer).")
        rbody, rhead = split_causal_lm(reference_model)
        if rhead.vocab is not None and head.vocab is not None and rhead.vocab != head.vocab:
            raise UsageError(f"the reference model has a vocabulary of {rhead.vocab} but the "
                             f"model {head.vocab}; the reference must use the same tokenizer.")
        with torch.no_grad():
            rdev = next(reference_model.parameters()).device
            rbatch = {k: v.to(rdev) for k, v in batch.items() if k in BODY_INPUTS}
            reference = token_losses(_hidden(rbody, rbatch), batch["labels"].to(rdev),
                                     head=rhead, chunk_rows=chunk_rows).to(device)
        ref_rows = int((batch["labels"][:, 1:] != -100).sum())
        ref_shape = model_shape(reference_model)
    res = selective_loss(_hidden(body, batch), batch["labels"], m, keep, head=head,
                         reference=reference, frequencies=frequencies, seed=seed,
                         chunk_rows=chunk_rows, select_only=select_only)
    shape = model_shape(model)
    flops = None
    if shape is not None:
        bsz, seq = batch["input_ids"].shape
        flops = step_flops(shape, bsz, seq, res.head_rows, res.scored_rows,
                           reference=ref_shape, reference_rows=ref_rows)
    return res, flops


def _without_dropped(model, batch: dict, m: TrainMethod, keep, **kw
                     ) -> tuple[SelectiveLoss, StepFlops | None]:
    """Two passes: select on the whole batch without gradients, then train only the samples
    with a kept token, each on its kept tokens (the same tokens, the same loss value)."""
    with torch.no_grad():
        first, f1 = causal_lm_loss(model, batch, m, keep, select_only=True, **kw)
    device = first.mask.device
    rows = first.mask.any(dim=1).nonzero().squeeze(-1)
    sub = {k: v.to(device)[rows] if torch.is_tensor(v) and v.dim() and
           v.shape[0] == first.mask.shape[0] else v for k, v in batch.items()}
    labels = sub["labels"].clone()
    labels[~first.mask[rows]] = -100
    sub["labels"] = labels
    kw.pop("reference_model", None)
    second, f2 = causal_lm_loss(model, sub, "all", 1.0, **kw)
    mask = torch.zeros_like(first.mask)
    mask[rows] = second.mask
    res = SelectiveLoss(loss=second.loss, mask=mask, weights=None, kept=second.kept,
                        labelled=first.labelled, head_rows=second.head_rows,
                        scored_rows=first.scored_rows + first.head_rows, method=m.name,
                        info={**first.info, "trained_samples": int(rows.numel())})
    flops = None
    if f1 is not None and f2 is not None:
        flops = StepFlops(body_forward=f1.body_forward + f2.body_forward,
                          body_backward=f2.body_backward, head_forward=f2.head_forward,
                          head_backward=f2.head_backward,
                          scoring=f1.scoring + f1.head_forward, reference=f1.reference,
                          head_rows=f2.head_rows, scored_rows=res.scored_rows,
                          reference_rows=f1.reference_rows)
    return res, flops
