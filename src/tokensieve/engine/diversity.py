"""Selectors that keep a diverse or covering set, shared by the places that cut token sets
(vision patches, VLM visual tokens).

- :func:`duplication`: how much each token duplicates a few pivot tokens (DART).
- :func:`k_center`: greedy k-center on cosine distance (ToDRE's diversity stage).
- :func:`facility_location`: greedy maximum coverage of a set of demand points (MMTok).

Every argmax ranks :func:`~tokensieve.engine.select.quantise`-rounded values, ties to the
earlier token, so the choice does not depend on the last bits of a sum.
"""

from __future__ import annotations

import torch

from .select import quantise


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32), for cosine similarities."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


def duplication(x: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """(B, N): each token's highest cosine similarity to a pivot, ``-inf`` at the pivots
    themselves (so ranking ``-duplication`` keeps the pivots first, then the tokens least
    duplicated by them). ``x`` (B, N, D); ``pivot`` (B, P) long token indices."""
    m = normalized(x)
    piv = torch.gather(m, 1, pivot[..., None].expand(-1, -1, m.shape[-1]))
    dup = (m @ piv.transpose(1, 2)).amax(-1)
    return dup.scatter(1, pivot, float("-inf"))


def k_center(x: torch.Tensor, count: int, first: torch.Tensor) -> torch.Tensor:
    """Greedy k-center: (B, N) boolean mask of ``count`` tokens, starting from ``first``
    (B,) and adding, one at a time, the token farthest (cosine distance) from those kept.
    ``x`` (B, N, D), ``1 <= count <= N``."""
    m = normalized(x)
    b, n, _ = m.shape
    keep = torch.zeros(b, n, dtype=torch.bool, device=m.device)
    rows = torch.arange(b, device=m.device)
    keep[rows, first] = True
    dist = 1 - (m @ m[rows, first][..., None]).squeeze(-1)              # (B, N)
    for _ in range(count - 1):
        nxt = quantise(dist.masked_fill(keep, float("-inf"))).argmax(-1)
        keep[rows, nxt] = True
        dist = torch.minimum(dist, 1 - (m @ m[rows, nxt][..., None]).squeeze(-1))
    return keep


def facility_location(sim: torch.Tensor, count: int, weight: torch.Tensor | None = None,
                      *, floor: float = -1.0) -> torch.Tensor:
    """Greedy maximum coverage: (N,) boolean mask of ``count`` candidates that maximise
    ``sum_i weight[i] * max(floor, max_{j kept} sim[i, j])`` (a monotone submodular
    facility-location objective, so greedy is within 1 - 1/e of the best set).

    ``sim`` (M, N): similarity of M demand points to N candidates (cosines: ``floor`` -1,
    their least value, so an uncovered point counts as covered by nothing); ``weight`` (M,)
    non-negative, default 1. Each step takes the candidate with the largest gain, ties to the
    earlier one. The gains (float64) are updated only for the demand points the last pick
    covered better, so a step costs (points it moved) x N, not M x N."""
    m, n = sim.shape
    s = sim.float()
    w = torch.ones(m, device=s.device) if weight is None else weight.float().to(s.device)
    cover = torch.full((m,), float(floor), device=s.device)
    keep = torch.zeros(n, dtype=torch.bool, device=s.device)

    def covered(rows: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """(N,) float64: what each candidate would add over ``level`` on those rows."""
        return ((s[rows] - level[:, None]).clamp_min(0) * w[rows, None]).sum(0, dtype=torch.float64)

    gain = covered(torch.arange(m, device=s.device), cover)
    for _ in range(count):
        j = quantise(gain.masked_fill(keep, float("-inf"))).argmax()
        keep[j] = True
        new = torch.maximum(cover, s[:, j])
        moved = (new > cover).nonzero().flatten()
        if len(moved):
            gain -= covered(moved, cover[moved]) - covered(moved, new[moved])
        cover = new
    return keep
