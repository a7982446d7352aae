"""Corpus frequency of each token id, counted once from the training data (the input of
the power-law decay loss, ``pdl``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..errors import InputError


def token_frequencies(ids: Iterable, vocab_size: int) -> torch.Tensor:
    """How often each id in ``[0, vocab_size)`` occurs in ``ids``: an iterable of token ids
    or of sequences of ids (lists, numpy arrays, tensors; e.g. a tokenised corpus, one
    document at a time). Returns an int64 tensor of shape (vocab_size,). An id outside the
    vocabulary is an :class:`InputError` (the data and the tokenizer disagree)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) \
            or vocab_size <= 0:
        raise InputError(f"vocab_size must be a positive whole number, got {vocab_size!r}.")
    counts = np.zeros(int(vocab_size), dtype=np.int64)
    loose: list[int] = []
    for item in ids:
        if torch.is_tensor(item):
            item = item.detach().cpu().numpy()
        arr = np.asarray(item)
        if arr.ndim == 0:
            loose.append(int(arr))
            continue
        _add(counts, arr.reshape(-1))
    if loose:
        _add(counts, np.asarray(loose))
    return torch.from_numpy(counts)


def _add(counts: np.ndarray, arr: np.ndarray) -> None:
    if arr.size == 0:
        return
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"token ids must be whole numbers, got dtype {arr.dtype}.")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= len(counts):
        bad = lo if lo < 0 else hi
        raise InputError(f"token id {bad} is outside the vocabulary [0, {len(counts)}); "
                         "count with the tokenizer's vocabulary size.")
    counts += np.bincount(arr, minlength=len(counts))
