"""Token -> word -> unit aggregation, in one place: which unit a token belongs to (the one
holding its first visible character), and the sum / mean / max of per-token values over a
unit, on batched tensors (kv) or 1-D arrays (text, inspect)."""

from __future__ import annotations

import numpy as np
import torch

REDUCTIONS = ("sum", "mean", "max")


def visible_starts(text: str, offsets: np.ndarray) -> np.ndarray:
    """Each token's start moved past its leading whitespace (kept when it is all space):
    byte-level BPE tokens such as " quick" start at the space before the word, yet belong
    to the word in which their first visible character lies."""
    starts = offsets[:, 0].copy()
    for i, (a, b) in enumerate(offsets):
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            starts[i] = a
    return starts


def token_units(starts: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """For each token (sorted ``starts``), the index of the [start, end) span (sorted, not
    overlapping) that holds its start, or -1 (between spans)."""
    starts = np.asarray(starts, dtype=np.int64)
    if not len(spans):
        return np.full(len(starts), -1, dtype=np.int64)
    j = np.searchsorted(spans[:, 0], starts, side="right") - 1
    ok = (j >= 0) & (starts < spans[np.clip(j, 0, None), 1])
    return np.where(ok, j, -1)


def reduce_units(values: torch.Tensor, units: torch.Tensor, n: int, how: str = "sum"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(reduction, token count) per unit 0 .. n-1 over the last axis: ``how`` is the sum,
    mean or max of ``values`` over the tokens of each unit; tokens whose unit is -1 count
    nowhere. An empty unit gets 0 (sum, mean) or -inf (max), and count 0."""
    if how not in REDUCTIONS:
        raise ValueError(f"unknown reduction {how!r}; use one of {', '.join(REDUCTIONS)}")
    inside = units >= 0
    slot = torch.where(inside, units, n)                 # one spare slot for the rest
    shape = (*values.shape[:-1], n + 1)
    count = torch.zeros(shape, dtype=values.dtype, device=values.device).scatter_add(
        -1, slot, inside.to(values.dtype))
    if how == "max":
        red = torch.full(shape, float("-inf"), dtype=values.dtype, device=values.device)
        red = red.scatter_reduce(-1, slot, values, reduce="amax")
    else:
        red = torch.zeros(shape, dtype=values.dtype, device=values.device).scatter_add(
            -1, slot, values)
        if how == "mean":
            red = red / count.clamp_min(1)
    return red[..., :n], count[..., :n]


def unit_reduce(values: torch.Tensor, units: torch.Tensor, how: str) -> torch.Tensor:
    """Per token, the ``how`` (mean / max / sum) of ``values`` (B, T) over its unit;
    ``units`` (B, T) holds unit indices >= 0, -1 for tokens that are their own unit."""
    b, t = values.shape
    n_units = int(units.max()) + 1 if units.numel() and int(units.max()) >= 0 else 0
    own = n_units + torch.arange(t, device=values.device).expand(b, t)
    slot = torch.where(units >= 0, units, own)
    red, _ = reduce_units(values, slot, n_units + t, how)
    return torch.gather(red, -1, slot)


def span_scores(values: np.ndarray, starts: np.ndarray, spans: np.ndarray, how: str = "sum"
                ) -> tuple[np.ndarray, np.ndarray]:
    """(score, token count) of each [start, end) span from the tokens whose visible start
    lies inside it; a span that holds no token start (one token covers several words)
    borrows the score of that covering token, the nearest one before it, with count 0."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return np.zeros(len(spans)), np.zeros(len(spans), dtype=np.int64)
    units = token_units(starts, spans)
    red, count = reduce_units(torch.from_numpy(values), torch.from_numpy(units), len(spans), how)
    red, count = red.numpy().copy(), count.numpy().astype(np.int64)
    empty = count == 0
    if empty.any():
        j = np.searchsorted(np.asarray(starts), spans[empty, 0], side="left") - 1
        red[empty] = values[np.clip(j, 0, len(values) - 1)]
    return red, count
