"""The token-selective causal-LM loss: select the labelled tokens worth learning, then the
mean cross-entropy over them only.

``labels`` follow Hugging Face causal LMs: the same shape as the input ids, ``-100`` where
nothing is learned, shifted inside: the logits (or hidden state) at position ``t`` predict
``labels[t + 1]``, so ``labels[:, 0]`` is never learned. Every per-token tensor this module
takes or returns (``mask``, ``weights``, per-token reference losses, :func:`token_losses`)
is aligned with ``labels``: entry ``[b, t]`` is about the token ``labels[b, t]``.

Given hidden states and the LM head instead of logits, the head (the vocabulary
projection) runs with gradients only on the selected rows; the per-token signals a method
needs are computed first without gradients, in chunks of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..engine.budget import check_keep
from ..errors import InputError, UsageError
from .methods import TrainMethod, get_method
from .signals import Head, TokenSignals, score_rows


@dataclass
class SelectiveLoss:
    """``loss``: scalar with grad (mean CE over the kept tokens, weighted for ``pdl``);
    ``mask`` (B, T) bool aligned with ``labels``: the tokens learned; ``weights`` (B, T)
    float32 or ``None``; ``kept`` / ``labelled``: token counts; ``head_rows``: rows the head
    ran on with gradients, ``scored_rows``: rows it ran on without (both 0 given logits);
    ``method``: the method used; ``info``: what the method reported."""

    loss: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor | None
    kept: int
    labelled: int
    head_rows: int
    scored_rows: int
    method: str
    info: dict = field(default_factory=dict)

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.labelled


def resolve_keep(method: TrainMethod, keep) -> float:
    """``keep`` checked for ``method``: ``None`` means 1.0 for the methods that learn every
    token (all, pdl) and 0.6 for the others."""
    if keep is None:
        return 1.0 if method.keeps_all else 0.6
    keep = check_keep(keep)
    if method.keeps_all and keep != 1.0:
        raise UsageError(f"method {method.name!r} learns every labelled token, so keep must be "
                         f"1.0, got {keep!r}; use eslm, excess, random or qtuning to keep fewer.")
    return keep


def _shifted(x: torch.Tensor, labels, what: str):
    if not torch.is_tensor(x) or x.dim() != 3 or not x.is_floating_point():
        raise InputError(f"{what} must be a float tensor (batch, seq, dim), got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    if not torch.is_tensor(labels) or labels.dim() != 2 or labels.is_floating_point():
        raise InputError(f"labels must be an integer tensor (batch, seq), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}.")
    if tuple(labels.shape) != tuple(x.shape[:2]):
        raise InputError(f"labels {tuple(labels.shape)} and {what} {tuple(x.shape)} disagree on "
                         "(batch, seq); give the labels of these inputs.")
    targets = labels[:, 1:].to(x.device)
    valid = targets != -100
    if not bool(valid.any()):
        raise InputError("labels are all -100 (ignored) after the causal shift: there is no "
                         "token to learn; give labels with at least one token after the first.")
    return targets, valid


def _head(head) -> Head:
    return head if isinstance(head, Head) else Head(head)


def _check_targets(targets: torch.Tensor, vocab: int | None) -> None:
    if vocab is not None and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise InputError(f"a label is outside the vocabulary [0, {vocab}) (ids "
                         f"{int(targets.min())}..{int(targets.max())}); use -100 to ignore.")


def _per_token(values, labels, valid, vocab, what, chunk_rows):
    """A reference given as logits (B, T, V) or per-token losses (B, T) aligned with
    labels -> (N,) losses at the labelled tokens."""
    if not torch.is_tensor(values):
        raise InputError(f"{what} must be a tensor: logits (batch, seq, vocab) or per-token "
                         f"losses (batch, seq), got {type(values).__name__}.")
    if values.dim() == 3:
        if tuple(values.shape[:2]) != tuple(labels.shape):
            raise InputError(f"{what} logits {tuple(values.shape)} and labels "
                             f"{tuple(labels.shape)} disagree on (batch, seq).")
        if vocab is not None and values.shape[-1] != vocab:
            raise UsageError(f"the {what} has a vocabulary of {values.shape[-1]} but the model "
                             f"{vocab}; the reference must use the same tokenizer.")
        rows = values[:, :-1].to(valid.device)[valid]
        targets = labels[:, 1:].to(valid.device)[valid]
        return score_rows(rows.detach(), targets, Head(lambda r: r), chunk_rows=chunk_rows)[0]
    if values.dim() == 2 and tuple(values.shape) == tuple(labels.shape):
        return values[:, 1:].to(valid.device)[valid].detach().float()
    raise InputError(f"{what} must be logits (batch, seq, vocab) or per-token losses shaped "
                     f"like labels {tuple(labels.shape)}, got {tuple(values.shape)}.")


def _frequency(frequencies, targets, vocab):
    if frequencies is None:
        raise UsageError("method 'pdl' needs frequencies: counts per token id over the "
                         "training data (tokensieve.train.token_frequencies).")
    f = torch.as_tensor(frequencies).to(targets.device)
    if f.dim() != 1 or (vocab is not None and f.shape[0] != vocab):
        raise UsageError(f"frequencies must be one count per vocabulary entry ({vocab}), got "
                         f"shape {tuple(f.shape)}.")
    if bool((f < 0).any()):
        raise InputError("frequencies must be counts >= 0.")
    return f[targets]


def selective_loss(logits_or_hidden: torch.Tensor, labels: torch.Tensor,
                   method: str | TrainMethod = "eslm", keep: float | None = None, *,
                   head=None, reference=None, frequencies=None, seed: int = 0,
                   chunk_rows: int | None = None, select_only: bool = False) -> SelectiveLoss:
    """The loss over the labelled tokens ``method`` selects at ``keep``.

    ``logits_or_hidden``: logits (B, T, V), or hidden states (B, T, H) with ``head`` (the
    LM head module, e.g. ``model.get_output_embeddings()``, or its weight (V, H)).
    ``labels`` (B, T): Hugging Face style (see the module docstring). ``method``: a name
    with settings ("all", "random", "eslm", "eslm:signal=entropy", "excess", "pdl:alpha=0.5",
    "qtuning:samples=0.5") or a :class:`TrainMethod`. ``keep``: fraction of the labelled
    tokens learned, in (0, 1] (``None``: 1.0 for all / pdl, 0.6 otherwise).
    ``reference`` (excess): the reference model's logits (B, T, V') or per-token losses
    (B, T) aligned with labels. ``frequencies`` (pdl): corpus counts per token id (V,).
    ``seed``: for ``random``. ``chunk_rows``: rows per chunk of the no-grad scoring pass.
    ``select_only``: only the selection is wanted (a first pass): a method that scored the
    tokens' losses takes the kept ones from that scoring instead of running the head again
    (the value is the same, without a graph; ``head_rows`` is 0).

    ``keep=1.0`` with ``all`` or ``eslm`` is the ordinary causal-LM loss.
    """
    m = get_method(method)
    keep = resolve_keep(m, keep)
    hidden_mode = head is not None
    what = "hidden states" if hidden_mode else "logits"
    targets_all, valid = _shifted(logits_or_hidden, labels, what)
    h = _head(head) if hidden_mode else None
    vocab = h.vocab if hidden_mode else logits_or_hidden.shape[-1]
    targets = targets_all[valid]
    _check_targets(targets, vocab)
    where = valid.nonzero()
    rows = logits_or_hidden[:, :-1][valid]          # (N, V or H); keeps the graph
    sig = TokenSignals(targets=targets, sample=where[:, 0], position=where[:, 1] + 1,
                       n_samples=labels.shape[0], seed=int(seed))
    scored = 0
    if m.needs & {"loss", "entropy"}:
        sig.loss, sig.entropy = score_rows(rows.detach(), targets, h or Head(lambda r: r),
                                           entropy="entropy" in m.needs, chunk_rows=chunk_rows)
        scored = sig.n if hidden_mode else 0
    if "reference" in m.needs:
        if reference is None:
            raise UsageError(f"method {m.name!r} needs a reference: the reference model's logits "
                             "or per-token losses on the same batch.")
        sig.reference = _per_token(reference, labels, valid, vocab, "reference", chunk_rows)
    if "frequency" in m.needs:
        sig.frequency = _frequency(frequencies, targets, vocab)
    sel = m.select(sig, keep)
    reuse = select_only and hidden_mode and sig.loss is not None
    if reuse:
        ce = sig.loss[sel.keep].float()
    else:
        kept_rows = rows[sel.keep]
        logits = h(kept_rows) if hidden_mode else kept_rows
        if hidden_mode:
            _check_targets(targets, logits.shape[-1])
        ce = F.cross_entropy(logits.float(), targets[sel.keep], reduction="none")
    if sel.weights is None:
        loss = ce.mean()
    else:
        w = sel.weights[sel.keep].to(ce.device)
        loss = (w * ce).sum() / w.sum()
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=valid.device)
    mask[sig.sample[sel.keep], sig.position[sel.keep]] = True
    weights = None
    if sel.weights is not None:
        weights = torch.zeros(labels.shape, dtype=torch.float32, device=valid.device)
        weights[sig.sample, sig.position] = sel.weights.float()
    kept = int(sel.keep.sum())
    return SelectiveLoss(loss=loss, mask=mask, weights=weights, kept=kept, labelled=sig.n,
                         head_rows=kept if hidden_mode and not reuse else 0, scored_rows=scored,
                         method=m.name, info=sel.info)


def token_losses(logits_or_hidden: torch.Tensor, labels: torch.Tensor, *, head=None,
                 chunk_rows: int | None = None) -> torch.Tensor:
    """Per-token cross-entropy (B, T) float32 aligned with ``labels`` (0 where nothing is
    predicted), without gradients; from logits, or hidden states through ``head`` in chunks.
    What a reference model gives ``selective_loss(..., reference=...)``."""
    targets_all, valid = _shifted(logits_or_hidden, labels,
                                  "hidden states" if head is not None else "logits")
    h = _head(head) if head is not None else Head(lambda r: r)
    targets = targets_all[valid]
    _check_targets(targets, h.vocab if head is not None else logits_or_hidden.shape[-1])
    ce, _ = score_rows(logits_or_hidden[:, :-1][valid].detach(), targets, h,
                       chunk_rows=chunk_rows)
    out = torch.zeros(labels.shape, dtype=torch.float32, device=valid.device)
    out[:, 1:][valid] = ce
    return out
