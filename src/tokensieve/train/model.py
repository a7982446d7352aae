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
                   seed: int = 0, chunk_rows: int | None = None
                   ) -> tuple[SelectiveLoss, StepFlops | None]:
    """The selective loss of ``model`` on ``batch`` (``input_ids``, ``labels``, optional
    ``attention_mask`` / ``position_ids``) and the FLOPs of the step (forward, backward, the
    selection pass, the reference's forward; ``None`` for a non-Llama-style config).
    ``reference_model``: a causal LM with the same vocabulary, for ``excess``."""
    m = get_method(method)
    resolve_keep(m, keep)  # fail before any forward
    if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
        raise InputError("the batch must be a dict with input_ids and labels (-100 = ignored).")
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
                         chunk_rows=chunk_rows)
    shape = model_shape(model)
    flops = None
    if shape is not None:
        bsz, seq = batch["input_ids"].shape
        flops = step_flops(shape, bsz, seq, res.head_rows, res.scored_rows,
                           reference=ref_shape, reference_rows=ref_rows)
    return res, flops
