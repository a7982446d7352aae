"""Training with a selective loss: a Hugging Face ``Trainer`` subclass and a plain PyTorch
step. Both run the model's decoder body, then the LM head only on the selected rows
(:func:`~tokensieve.train.model.causal_lm_loss`), and count the FLOPs each step spends.
``TrainingArguments``, data collators, optimisers stay the user's."""

from __future__ import annotations

from dataclasses import dataclass

import transformers

from .flops import StepFlops
from .loss import SelectiveLoss, resolve_keep
from .methods import TrainMethod, get_method
from .model import causal_lm_loss


class SelectiveTrainer(transformers.Trainer):
    """``transformers.Trainer`` whose training loss learns only the tokens ``method``
    selects at ``keep`` (evaluation keeps the ordinary loss over every labelled token).

    Extra arguments: ``method``, ``keep`` (as :func:`selective_loss`), ``reference_model``
    (for ``excess``; moved by you to the right device, never trained), ``frequencies`` (for
    ``pdl``), ``chunk_rows``. Batches need ``input_ids`` and ``labels``. Each log line gains
    ``kept_fraction`` (tokens learned / labelled since the last log) and ``selective_flops``
    (FLOPs spent since the start, :mod:`tokensieve.train.flops`); ``self.flops_spent`` holds
    the running total. ``random`` is seeded by ``args.seed`` + the micro-step."""

    def __init__(self, *args, method: str | TrainMethod = "eslm", keep: float | None = None,
                 reference_model=None, frequencies=None, chunk_rows: int | None = None,
                 **kwargs):
        self.selection_method = get_method(method)
        self.selection_keep = resolve_keep(self.selection_method, keep)
        self.reference_model = reference_model
        self.frequencies = frequencies
        self.chunk_rows = chunk_rows
        self.flops_spent = 0
        self._window = [0, 0]  # kept, labelled since the last log
        self._micro_step = 0
        super().__init__(*args, **kwargs)
        # the loss is a mean over this micro-batch's kept tokens: let the Trainer divide
        # by the gradient-accumulation steps itself
        self.model_accepts_loss_kwargs = False
        if reference_model is not None:
            reference_model.eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        method, keep = (self.selection_method, self.selection_keep) if training else ("all", 1.0)
        res, flops = causal_lm_loss(
            model, inputs, method, keep, reference_model=self.reference_model,
            frequencies=self.frequencies, seed=self.args.seed + self._micro_step,
            chunk_rows=self.chunk_rows)
        if training:
            self._micro_step += 1
            self._window[0] += res.kept
            self._window[1] += res.labelled
            self.flops_spent += flops.total if flops is not None else 0
        return (res.loss, {"loss": res.loss}) if return_outputs else res.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._window[1]:
            logs["kept_fraction"] = self._window[0] / self._window[1]
            logs["selective_flops"] = float(self.flops_spent)
            self._window = [0, 0]
        super().log(logs, start_time)


@dataclass
class StepResult:
    """One optimiser step: ``loss`` (float), tokens ``kept`` / ``labelled``, the step's
    ``flops`` (``None`` for a non-Llama-style config) and the full ``selection``."""

    loss: float
    kept: int
    labelled: int
    flops: StepFlops | None
    selection: SelectiveLoss


def selective_step(model, batch: dict, optimizer, method: str | TrainMethod = "eslm",
                   keep: float | None = None, *, reference_model=None, frequencies=None,
                   seed: int = 0, chunk_rows: int | None = None) -> StepResult:
    """One plain-PyTorch training step on ``batch`` (``input_ids``, ``labels``, optional
    ``attention_mask``): zero the gradients, selective loss, backward, ``optimizer.step()``."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    res, flops = causal_lm_loss(model, batch, method, keep, reference_model=reference_model,
                                frequencies=frequencies, seed=seed, chunk_rows=chunk_rows)
    res.loss.backward()
    optimizer.step()
    return StepResult(loss=float(res.loss.detach()), kept=res.kept, labelled=res.labelled,
                      flops=flops, selection=res)
