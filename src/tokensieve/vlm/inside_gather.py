"""How the inside stage shortens a sequence in the middle of the language model: gather the
kept rows of the hidden states, the 4-D attention mask, cos/sin and position ids (original
positions kept; re-left-padding slots masked out) and average merged tokens."""

from __future__ import annotations

import torch

from ..errors import UsageError


def merge_into(hidden, b, s, into):
    """Each kept token becomes the mean (float32) of itself and the tokens merged into it."""
    n = len(into)
    src = (into >= 0).nonzero().flatten()
    dst = into[src]
    block = hidden[b, s:s + n].float()
    total = torch.zeros_like(block).index_add_(0, dst.to(block.device), block[src.to(block.device)])
    size = torch.zeros(n).index_add_(0, dst, torch.ones(len(dst)))
    keep = size > 0
    hidden[b, s:s + n][keep] = (total[keep.to(block.device)]
                                / size[keep].to(block.device)[:, None]).to(hidden.dtype)


def gather_rows(x, idx, slot_valid):
    """(B, L', D) rows of ``x`` (B, L, D) at ``idx``; re-padding slots are zeros."""
    out = x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
    return out * slot_valid[:, :, None].to(out.dtype)


def _gather_mask(mask, idx, slot_valid):
    """The 4-D mask of the kept rows and columns (re-padding slots masked out); a ``None``
    (causal, no padding) mask stays ``None`` unless rows were re-padded."""
    if mask is None:
        if bool(slot_valid.all()):
            return None
        n = idx.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=idx.device).tril()
        return (causal[None] & slot_valid[:, None, :] & slot_valid[:, :, None])[:, None]
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise UsageError(f"the inside stage needs a 4-D attention mask, got {type(mask).__name__}.")
    if mask.shape[-1] != mask.shape[-2]:
        raise UsageError("the inside stage prunes a prefill on an empty cache only.")
    B = idx.shape[0]
    m = mask.expand(B, -1, -1, -1)
    rows = torch.arange(B, device=idx.device)[:, None, None]
    out = m[rows, :, idx[:, :, None], idx[:, None, :]].permute(0, 3, 1, 2)  # (B, H, L', L')
    ok = (slot_valid[:, None, :, None] & slot_valid[:, None, None, :])
    if out.dtype == torch.bool:
        return out & ok
    return out.masked_fill(~ok, torch.finfo(out.dtype).min)


def _gather_last(t, idx, slot_valid=None):
    """``t`` (..., B or 1, L) gathered on its last dim per row."""
    shape = (*t.shape[:-2], idx.shape[0], t.shape[-1])
    return t.expand(shape).gather(-1, idx.expand(*t.shape[:-2], -1, -1))


def _gather_pe(pe, idx, slot_valid=None):
    """cos / sin (..., B or 1, L, D) gathered on the sequence dim (-2) per row."""
    def one(t):
        shape = (*t.shape[:-3], idx.shape[0], *t.shape[-2:])
        at = idx[..., None].expand(*t.shape[:-3], -1, -1, t.shape[-1])
        return t.expand(shape).gather(-2, at)
    return tuple(one(t) for t in pe)


GATHER = {
    "attention_mask": _gather_mask,
    "position_embeddings": _gather_pe,
    "position_ids": _gather_last,
    "cache_position": lambda c, idx, sv: torch.arange(idx.shape[1], device=c.device),
}
