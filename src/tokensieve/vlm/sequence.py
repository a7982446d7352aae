"""The language model's sequence after pruning: the kept positions of each row, packed to the
right and re-left-padded (rows lose different numbers of tokens), and the decode-time
attention mask that matches the shortened KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.merge import combine
from ..errors import UsageError


@dataclass
class Kept:
    """Which original positions the shortened sequence holds.

    ``idx`` (B, L'): the original position of each slot (0 in padding slots); ``valid``
    (B, L'): the slot holds a kept token; ``length``: L, the original sequence length;
    ``next_position`` (B,): the position id after each row's prompt (set by the pruner)."""

    idx: torch.Tensor
    valid: torch.Tensor
    length: int
    next_position: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.idx.shape[1]

    @property
    def dropped(self) -> int:
        """Slots the sequence lost: L - L' (the same for every row)."""
        return self.length - self.width


def compact(keep: torch.Tensor) -> Kept:
    """:class:`Kept` of a (B, L) boolean keep mask: each row's kept positions in order,
    left-padded to the longest row (at least one slot)."""
    b, length = keep.shape
    counts = keep.sum(1)
    width = max(1, int(counts.max()))
    pad = width - counts                                            # (B,)
    slot = keep.long().cumsum(1) - 1 + pad[:, None]
    rows, cols = keep.nonzero(as_tuple=True)
    idx = torch.zeros(b, width, dtype=torch.long, device=keep.device)
    idx[rows, slot[rows, cols]] = cols
    valid = torch.arange(width, device=keep.device)[None, :] >= pad[:, None]
    return Kept(idx, valid, length)


def take(x: torch.Tensor, kept: Kept, dim: int = 1) -> torch.Tensor:
    """``x`` at the kept positions along ``dim``: 1 for (B, L, ...) tensors (embeddings,
    2-D position ids), 2 for (k, B, L) M-RoPE position ids."""
    idx = kept.idx.to(x.device)
    if dim == 2:
        return torch.gather(x, 2, idx[None].expand(x.shape[0], -1, -1))
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, idx)


def shrink_mask(mask: torch.Tensor, kept: Kept, past: int, q: int) -> torch.Tensor:
    """A decode call's 2-D attention mask in the shortened frame: ``generate`` passes one
    of length L + t (the original prompt plus the tokens since); the cache holds L' + t.
    A mask already of the shortened length is returned as it is."""
    if mask.dim() != 2:
        raise UsageError("inside vlm.prune() the attention mask must be 2-D (batch, tokens); "
                         "a prepared 4-D mask cannot follow the shortened sequence.")
    if mask.shape[1] == past + q:
        return mask
    if mask.shape[1] != past + q + kept.dropped or mask.shape[0] != kept.idx.shape[0]:
        raise UsageError(
            f"the attention mask ({tuple(mask.shape)}) matches neither the original sequence "
            f"({kept.idx.shape[0]}, {past + q + kept.dropped}) nor the pruned one; pass the "
            "mask generate() builds (prompt plus generated tokens).")
    prompt = torch.gather(mask[:, :kept.length], 1, kept.idx.to(mask.device))
    prompt = prompt * kept.valid.to(mask.device).to(prompt.dtype)
    return torch.cat([prompt, mask[:, kept.length:]], dim=1)


def as_into(selected: torch.Tensor, count: int, n: int, name: str) -> torch.Tensor:
    """A method's answer (bool keep mask or long ``into`` vector) as an ``into`` vector on
    the CPU, checked: exactly ``count`` kept tokens, merges only into kept tokens."""
    sel = torch.as_tensor(selected).detach().cpu()
    if sel.shape != (n,):
        raise UsageError(f"VLM method {name!r} returned shape {tuple(sel.shape)} for {n} tokens.")
    if sel.dtype == torch.bool:
        into = torch.where(sel, torch.arange(n), torch.full((n,), -1))
    elif not sel.is_floating_point():
        into = sel.long()
    else:
        raise UsageError(f"VLM method {name!r} must return a bool mask or a long 'into' "
                         f"vector, got {sel.dtype}.")
    fixed = into == torch.arange(n)
    bad = (into < -1) | (into >= n) | ~(fixed | (into == -1) | fixed[into.clamp(0, n - 1)])
    if int(fixed.sum()) != count or bool(bad.any()):
        raise UsageError(f"VLM method {name!r} must keep exactly {count} of {n} tokens and merge "
                         f"only into kept ones; it kept {int(fixed.sum())}.")
    return into


def merged_features(features: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """(count, D): each kept token's feature, the mean of itself and the tokens merged
    into it (a kept token that absorbed nothing is copied bit for bit)."""
    fixed = into == torch.arange(into.shape[0])
    rank = fixed.long().cumsum(0) - 1
    assign = torch.where(into >= 0, rank[into.clamp_min(0)], torch.full_like(into, -1))
    y, _ = combine(features[None], assign[None].to(features.device), int(fixed.sum()))
    return y[0]
