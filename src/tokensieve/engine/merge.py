"""The merge action: tokens mapped to output slots, combined by a weighted mean.

Dropping is the special case of a slot ``-1``; keeping a token as it is, a slot of its own.
Sizes (how many original tokens each output stands for) are tracked, so later merges and
proportional attention weigh a merged token by everything it holds.
"""

from __future__ import annotations

import torch

from .select import quantise


def combine(x: torch.Tensor, assign: torch.Tensor, n_out: int, weight: torch.Tensor | None = None):
    """Combine tokens into ``n_out`` slots.

    ``x`` (B, N, C); ``assign`` (B, N) long, the output slot of each token or -1 to drop it;
    ``weight`` (B, N) non-negative (default 1: a plain mean). Returns ``(y, mass)``: ``y``
    (B, n_out, C) the weighted mean of the tokens in each slot, ``mass`` (B, n_out) the sum of
    their weights (0 for an empty slot, whose row is 0), both in ``x``'s dtype. Sums are
    accumulated in float32 (float64 for float64 input), so float16 / bfloat16 tokens do not
    overflow or lose small weights. A slot holding one token returns it unchanged, bit for
    bit.
    """
    b, n, c = x.shape
    if assign.shape != (b, n):
        raise ValueError(f"assign has shape {tuple(assign.shape)}, expected {(b, n)}")
    acc = torch.promote_types(x.dtype, torch.float32)
    w = torch.ones(b, n, dtype=acc, device=x.device) if weight is None else weight.to(acc)
    live = assign >= 0
    slot = torch.where(live, assign, n_out)  # dropped tokens go to a spare slot, cut off below
    w = torch.where(live, w, torch.zeros_like(w))
    mass = torch.zeros(b, n_out + 1, dtype=acc, device=x.device).scatter_add_(1, slot, w)
    total = torch.zeros(b, n_out + 1, c, dtype=acc, device=x.device)
    total.scatter_add_(1, slot[..., None].expand(b, n, c), x.to(acc) * w[..., None])
    mass, total = mass[:, :n_out], total[:, :n_out]
    count = torch.zeros(b, n_out + 1, dtype=torch.long, device=x.device)
    count = count.scatter_add_(1, slot, torch.ones_like(slot))[:, :n_out]
    y = (total / mass.clamp_min(torch.finfo(acc).tiny)[..., None]).to(x.dtype)
    # a slot with a single token: copy it (no rounding from w*x/w)
    single = count == 1
    if bool(single.any()):
        first = torch.full((b, n_out + 1), n, dtype=torch.long, device=x.device)
        first = first.scatter_reduce_(1, slot, torch.arange(n, device=x.device).expand(b, n),
                                      reduce="amin")[:, :n_out]
        picked = torch.gather(x, 1, first.clamp_max(n - 1)[..., None].expand(b, n_out, c))
        y = torch.where(single[..., None], picked, y)
    return y, mass.to(x.dtype)


def contextual_groups(metric: torch.Tensor, dominant: torch.Tensor, n_targets: int):
    """VisionZip's contextual tokens: the tokens outside ``dominant`` (B, N) bool (the same
    number in every row), in order; ``n_targets`` (<= that number) of them, evenly spaced,
    become targets and every other one joins the target it is most similar to (cosine of
    ``metric`` (B, N, D), rounded by ``quantise``; ties to the earlier target). Returns
    ``(rest, targets, group)``: ``rest`` (B, R) the tokens outside ``dominant``, ``targets``
    (B, T) the target tokens, ``group`` (B, R) in [0, T) the target each one joins (a target
    joins itself)."""
    b, n = dominant.shape
    n_rest = n - int(dominant[0].sum())
    rest = torch.sort((~dominant).long(), dim=-1, descending=True, stable=True).indices
    rest = rest[:, :n_rest]                                               # (B, R), in order
    # evenly spaced and distinct: consecutive points are >= 1 apart before rounding
    pick = torch.linspace(0, n_rest - 1, n_targets, device=metric.device).round().long()
    targets = rest[:, pick]                                               # (B, T)
    m = torch.nn.functional.normalize(metric.float(), dim=-1)
    d = m.shape[-1]
    sim = torch.gather(m, 1, rest[..., None].expand(-1, -1, d)) @ \
        torch.gather(m, 1, targets[..., None].expand(-1, -1, d)).transpose(1, 2)  # (B, R, T)
    sim = quantise(sim)
    sim[:, pick, torch.arange(len(pick), device=sim.device)] = float("inf")  # own target
    return rest, targets, sim.argmax(-1)
