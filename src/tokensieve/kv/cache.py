"""A KV cache that really shrinks, on transformers' Cache API.

Each compressible (full-attention) layer is a :class:`CompressedLayer`. It counts the tokens it
has *seen* separately from the entries it *stores*, so ``get_seq_length()`` (which ``generate``
uses for ``cache_position`` and input slicing) stays the true position after eviction, while
``get_mask_sizes()`` describes the stored entries so the model builds masks of the right width.

Storage is dense ``(batch, kv_heads, slots, head_dim)`` while every head keeps the same number
of entries, and per-head blocks (one tensor per KV head) once heads keep different numbers
(head-adaptive budgets): memory is freed for real, nothing is masked in place. Rows of a batch
that keep fewer entries than the longest row have *invalid* slots at the front; the attention
hooks (``hooks.py``) mask them, per layer.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from ..errors import UsageError


def _front_aligned_gather(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a keep mask (..., T) return (indices (..., width), valid (..., width)): the kept
    positions in ascending order, right-aligned, with invalid filler slots in front."""
    t = mask.shape[-1]
    pos = torch.arange(t, device=mask.device)
    order = torch.sort(torch.where(mask, pos + t, pos), dim=-1, stable=True).indices
    idx = order[..., t - width:] if width else order[..., :0]
    return idx, torch.gather(mask, -1, idx)


class CompressedLayer(DynamicLayer):
    """One full-attention layer whose stored entries can be evicted."""

    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.valid: torch.Tensor | None = None       # (B, S) or None when every slot is real
        self._pos: torch.Tensor | None = None        # (B, H, S0) positions of the slots kept
        self.appended = 0                            # slots added since (positions implicit)
        self.heads: list[dict] | None = None         # per-head blocks once heads differ
        self.compressed = False

    # --- transformers' layer API ------------------------------------------------------
    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, q, _ = key_states.shape
        self.seen += q
        self.appended += q
        if self.heads is not None:
            return self._update_ragged(key_states, value_states)
        if self.keys.numel() == 0:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        if self.valid is not None:
            self.valid = torch.cat([self.valid, self.valid.new_ones(b, q)], dim=-1)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.seen

    def _tail_positions(self, b: int, h: int, device) -> torch.Tensor:
        """Positions of the slots appended since the last eviction (the newest tokens)."""
        pos = torch.arange(self.seen - self.appended, self.seen, device=device)
        return pos.expand(b, h, self.appended)

    @property
    def positions(self) -> torch.Tensor | None:
        """(B, H, S) token position of each stored slot (dense storage)."""
        if self.keys is None or self.keys.numel() == 0:
            return None
        b, h = self.keys.shape[:2]
        tail = self._tail_positions(b, h, self.keys.device)
        return tail.clone() if self._pos is None else torch.cat([self._pos, tail], dim=-1)

    def stored_length(self) -> int:
        """Slots a forward pass sees for this layer (the longest head in per-head storage)."""
        if self.heads is not None:
            return max(blk["k"].shape[1] for blk in self.heads)
        return 0 if self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        q = cache_position.shape[0]
        stored = self.stored_length()
        return stored + q, self.seen - stored

    def crop(self, max_length: int) -> None:
        raise UsageError(
            "A compressed KV cache cannot be cropped (assisted / speculative decoding); "
            "generate without an assistant model inside kv.compress()."
        )

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def _map(self, fn) -> None:
        if self.heads is not None:
            for blk in self.heads:
                for key in list(blk):
                    if blk[key] is not None:
                        blk[key] = fn(blk[key])
            return
        if self.keys is None or self.keys.numel() == 0:
            return
        self.keys, self.values = fn(self.keys), fn(self.values)
        if self._pos is not None:
            self._pos = fn(self._pos)
        if self.valid is not None:
            self.valid = fn(self.valid)

    # --- eviction --------------------------------------------------------------------
    def slot_valid(self) -> torch.Tensor | None:
        """(B, H, S) validity of the slots a forward pass sees, or None if all are real."""
        if self.heads is None:
            return None if self.valid is None else self.valid[:, None, :].expand(
                -1, self.keys.shape[1], -1)
        width = self.stored_length()
        parts = []
        for blk in self.heads:
            s = blk["k"].shape[1]
            v = blk["valid"] if blk["valid"] is not None else torch.ones(
                blk["k"].shape[0], s, dtype=torch.bool, device=blk["k"].device)
            parts.append(torch.nn.functional.pad(v, (width - s, 0), value=False))
        return torch.stack(parts, dim=1)

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values, positions) padded to (B, H, S, ...) for scoring."""
        if self.heads is None:
            return self.keys, self.values, self.positions
        width = self.stored_length()

        b = self.heads[0]["k"].shape[0]
        tail = self._tail_positions(b, 1, self.heads[0]["k"].device)[:, 0]

        def stack(name):
            out = []
            for blk in self.heads:
                t = blk[name] if name != "pos" else torch.cat([blk["pos"], tail], dim=1)
                pad = width - t.shape[1]
                spec = (0, 0, pad, 0) if t.dim() == 3 else (pad, 0)
                out.append(torch.nn.functional.pad(t, spec))
            return torch.stack(out, dim=1)

        return stack("k"), stack("v"), stack("pos")

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the slots where ``mask`` (B, H, S) is true; everything else is freed."""
        keys, values, positions = self.dense_view()
        valid = self.slot_valid()
        if valid is not None:
            mask = mask & valid
        counts = mask.sum(-1)                                   # (B, H)
        b, h = counts.shape
        if bool((counts == counts[:, :1]).all()):               # same count on every head: dense
            width = int(counts.max())
            idx, ok = _front_aligned_gather(mask, width)
            gi = idx[..., None].expand(-1, -1, -1, keys.shape[-1])
            self.keys = torch.gather(keys, 2, gi).contiguous()
            self.values = torch.gather(values, 2, gi).contiguous()
            self._pos = torch.gather(positions, 2, idx).contiguous()
            row_ok = ok[:, 0, :]
            self.valid = None if bool(row_ok.all()) else row_ok.contiguous()
            self.heads = None
        else:                                                   # per-head blocks
            self.heads = []
            for j in range(h):
                width = int(counts[:, j].max())
                idx, ok = _front_aligned_gather(mask[:, j], width)
                gi = idx[..., None].expand(-1, -1, keys.shape[-1])
                self.heads.append({
                    "k": torch.gather(keys[:, j], 1, gi).contiguous(),
                    "v": torch.gather(values[:, j], 1, gi).contiguous(),
                    "pos": torch.gather(positions[:, j], 1, idx).contiguous(),
                    "valid": None if bool(ok.all()) else ok.contiguous(),
                })
            self.keys = self.values = keys.new_empty(0)
            self.valid = None
        self.appended = 0
        self.compressed = True

    def _update_ragged(self, key_states, value_states):
        b, _, q, _ = key_states.shape
        for j, blk in enumerate(self.heads):
            blk["k"] = torch.cat([blk["k"], key_states[:, j]], dim=1)
            blk["v"] = torch.cat([blk["v"], value_states[:, j]], dim=1)
            if blk["valid"] is not None:
                blk["valid"] = torch.cat([blk["valid"], blk["valid"].new_ones(b, q)], dim=1)
        keys, values, _ = self.dense_view()
        return keys, values

    # --- accounting ------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of keys and values held (invalid filler slots of short rows included)."""
        if self.heads is not None:
            return sum(blk["k"].nbytes + blk["v"].nbytes for blk in self.heads)
        if self.keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    def entries(self) -> int:
        """Real (valid) key-value entries stored, summed over batch rows and heads."""
        if self.heads is not None:
            return sum(int(blk["valid"].sum()) if blk["valid"] is not None
                       else blk["k"].shape[0] * blk["k"].shape[1] for blk in self.heads)
        if self.keys is None or self.keys.numel() == 0:
            return 0
        b, h, s, _ = self.keys.shape
        return h * (int(self.valid.sum()) if self.valid is not None else b * s)


class CompressedCache(Cache):
    """A cache whose full-attention layers are :class:`CompressedLayer`; sliding-window
    layers (Gemma 3, Mistral with a window) keep transformers' own bounded layer."""

    def __init__(self, config, plan=None) -> None:
        text = config.get_text_config(decoder=True)
        window = getattr(text, "sliding_window", None)
        types = getattr(text, "layer_types", None) or [
            "sliding_attention" if window else "full_attention"
        ] * text.num_hidden_layers
        layers = [DynamicSlidingWindowLayer(window)
                  if t in ("sliding_attention", "chunked_attention") else CompressedLayer()
                  for t in types]
        super().__init__(layers=layers)
        self.mask_layer = next((i for i, t in enumerate(types) if t == "full_attention"), 0)
        self.plan = plan
        self.prefilled = False          # the first forward (the context) has been compressed
        self.pending: dict = {}         # global-pool policies: layers scored, not yet evicted
        self.shared: dict = {}          # policy state shared across layers (ChunkKV reuse)
        self.n_real = self.row_start = None
        self.peak_bytes = 0             # most KV bytes held at once (measured in the hooks)

    def compressible_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, CompressedLayer)]

    def compressible(self, layer_idx: int) -> bool:
        return isinstance(self.layers[layer_idx], CompressedLayer)

    def nbytes(self) -> int:
        """Bytes of keys and values held by every layer."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompressedLayer):
                total += layer.nbytes()
            elif layer.is_initialized and layer.keys is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total

    def entries(self) -> int:
        """Key-value entries held by the compressible layers (rows x heads x tokens)."""
        return sum(layer.entries() for layer in self.layers if isinstance(layer, CompressedLayer))

    def seen(self) -> int:
        return self.get_seq_length()
