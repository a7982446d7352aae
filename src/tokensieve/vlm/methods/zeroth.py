"""Zeroth-order sensitivity at the projector (ZOO-Prune's signal): keep the tokens whose
projected features move most when their projector input is nudged."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...engine.select import quantise
from ...errors import UsageError
from .base import Visual, VLMMethod, top
from .signals import require

MAX_DIRECTIONS = 64
MAX_ROWS = 65536


def sensitivity(project: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                directions: int, eps: float, generator: torch.Generator,
                rows: int = 4096) -> torch.Tensor:
    """(N,) how far ``project``'s output for each token moves per unit of input change,
    averaged over ``directions`` seeded random directions: every token's input ``x`` (N, D)
    is moved by ``eps`` times the tokens' mean norm along its own unit direction (all tokens
    at once: the projector maps tokens one to one), ``project`` sees at most ``rows`` rows a
    call and ``(directions + 1) * N`` rows in all."""
    n, d = x.shape
    step = eps * x.float().norm(dim=-1).mean().clamp_min(1e-6)

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.cat([project(inp[i:i + rows]).float() for i in range(0, n, rows)])

    with torch.no_grad():
        base = run(x)
        total = torch.zeros(n, device=base.device)
        for _ in range(directions):
            u = torch.randn(n, d, generator=generator, device=generator.device)
            u = torch.nn.functional.normalize(u, dim=-1).to(x.device) * step
            total += (run((x.float() + u).to(x.dtype)) - base).norm(dim=-1)
    return total / (directions * step)


def diverse_top(scores: torch.Tensor, features: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy: the best-scoring token first, then each time the token with the largest
    ``score x cosine distance to the nearest token kept so far`` (ZOO-Prune's hybrid score);
    rounded by ``quantise``, ties to the earlier token."""
    m = torch.nn.functional.normalize(features.float(), dim=-1)
    s = scores.float().clamp_min(0)
    keep = torch.zeros(len(s), dtype=torch.bool, device=s.device)
    dist = torch.ones_like(s)
    for _ in range(count):
        i = int(quantise((s * dist).masked_fill(keep, float("-inf"))).argmax())
        keep[i] = True
        dist = torch.minimum(dist, (1 - m @ m[i]).clamp_min(0))
    return keep


class ZerothOrder(VLMMethod):
    """Zeroth-order sensitivity: keep the ``count`` tokens whose projector output changes
    most under ``directions`` small seeded random perturbations (size ``eps`` relative to the
    mean token norm) of their projector input; cost: ``directions + 1`` projector passes.
    ``diverse``: ZOO-Prune's hybrid selection, sensitivity times the distance (of the
    projected features) to the tokens already kept, chosen greedily."""

    name = "zeroth"
    needs = frozenset({"vision", "project"})

    def __init__(self, directions: int = 4, eps: float = 0.05, rows: int = 4096,
                 diverse: bool = False):
        def whole(value, lo, hi):
            return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi

        if not whole(directions, 1, MAX_DIRECTIONS):
            raise UsageError(f"VLM method 'zeroth': directions must be a whole number in "
                             f"1..{MAX_DIRECTIONS}, got {directions!r}.")
        if not whole(rows, 1, MAX_ROWS):
            raise UsageError(f"VLM method 'zeroth': rows (per projector call) must be a whole "
                             f"number in 1..{MAX_ROWS}, got {rows!r}.")
        ok = isinstance(eps, int | float) and not isinstance(eps, bool) and 0 < eps <= 1
        if not ok:
            raise UsageError(f"VLM method 'zeroth': eps is the perturbation size relative to "
                             f"the token norm, in (0, 1], got {eps!r}.")
        if not isinstance(diverse, bool):
            raise UsageError(f"VLM method 'zeroth': diverse is true or false, got {diverse!r}.")
        self.directions, self.eps, self.rows, self.diverse = directions, float(eps), rows, diverse

    def select(self, v: Visual) -> torch.Tensor:
        x = require(v, "vision", self.name, "the projector's input")
        project = require(v, "project", self.name, "the projector, to probe it")
        if x.shape[0] != v.n:
            raise UsageError(f"VLM method {self.name!r}: {x.shape[0]} projector inputs for "
                             f"{v.n} visual tokens; it needs a projector that maps tokens one "
                             "to one.")
        score = sensitivity(project, x, self.directions, self.eps, v.generator, self.rows)
        if self.diverse:
            return diverse_top(score, v.features, v.count)
        return top(score, v.count)
