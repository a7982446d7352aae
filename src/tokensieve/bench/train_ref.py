"""A reference model's per-token losses on the windows of a token stream, computed once per
window and kept in a cache file (they depend on the reference and the data, never on a run):
the ``excess`` method's reference and the held-out "informative token" sets read them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..train import ModelShape, body_forward_flops, head_row_flops, split_causal_lm, token_losses


def stream_key(ids: np.ndarray, block_len: int, reference_name: str) -> str:
    """A short name for (stream contents, block length, reference)."""
    h = hashlib.sha256(np.ascontiguousarray(ids).tobytes())
    h.update(f"{block_len}:{reference_name}".encode())
    return h.hexdigest()[:16]


class ReferenceLosses:
    """``losses(windows) -> (n, block_len)`` float32 per-token losses of ``model`` (aligned
    with the block's ids, 0 at position 0) for windows of ``ids``; each window is computed
    once, in batches of ``batch``, and saved to ``path`` (``None``: kept in memory only).
    ``used``: every window asked for since creation (their FLOPs are :meth:`flops`)."""

    def __init__(self, model, ids: np.ndarray, block_len: int, path: Path | None = None,
                 batch: int = 8):
        self.model, self.ids, self.block_len = model, ids, int(block_len)
        self.path, self.batch = (Path(path) if path is not None else None), int(batch)
        self.cache: dict[int, np.ndarray] = {}
        self.used: set[int] = set()
        self.computed = 0
        if self.path is not None and self.path.is_file():
            with np.load(self.path) as z:
                self.cache = dict(zip(z["windows"].tolist(), z["losses"], strict=True))

    def _block(self, w: int) -> np.ndarray:
        return self.ids[w * self.block_len:(w + 1) * self.block_len].astype(np.int64)

    def compute(self, windows) -> None:
        """Fill the cache for ``windows`` (without saving)."""
        missing = sorted({int(w) for w in windows} - self.cache.keys())
        if not missing:
            return
        body, head = split_causal_lm(self.model)
        device = next(self.model.parameters()).device
        self.model.eval()
        with torch.inference_mode():
            for i in range(0, len(missing), self.batch):
                part = missing[i:i + self.batch]
                x = torch.from_numpy(np.stack([self._block(w) for w in part])).to(device)
                out = body(input_ids=x)
                hid = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                losses = token_losses(hid, x, head=head).cpu().numpy().astype(np.float16)
                self.cache.update(zip(part, losses, strict=True))
                self.computed += len(part)

    def __call__(self, windows) -> torch.Tensor:
        windows = [int(w) for w in windows]
        self.compute(windows)
        self.used.update(windows)
        return torch.from_numpy(np.stack([self.cache[w] for w in windows]).astype(np.float32))

    def save(self) -> None:
        if self.path is None or not self.computed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            ws = sorted(self.cache)
            with open(tmp, "wb") as fh:
                np.savez(fh, windows=np.asarray(ws, np.int64),
                         losses=np.stack([self.cache[w] for w in ws]))
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def flops(self) -> int:
        """Forward FLOPs of the reference over every window asked for (cached or not)."""
        shape = ModelShape.from_config(self.model.config)
        n = len(self.used)
        return (body_forward_flops(shape, self.block_len, n)
                + n * (self.block_len - 1) * head_row_flops(shape))
