"""A KV cache that really shrinks, on transformers' Cache API.

Each compressible (full-attention) layer is a :class:`CompressedLayer`. It counts the tokens it
has *seen* separately from the entries it *stores*, so ``get_seq_length()`` (which ``generate``
uses for ``cache_position`` and input slicing) stays the true position after eviction, while
``get_mask_sizes()`` describes the stored entries so the model builds masks of the right width.

Storage is dense ``(batch, kv_heads, slots, head_dim)`` while every head keeps the same number
of entries. Once heads keep different numbers (head-adaptive budgets) each KV head is its own
block ``(batch, capacity, head_dim)``: memory is freed for real, nothing is masked in place.
A block has room for more slots than it holds (it grows by a chunk when full), so a decode step
writes the new entry in place instead of copying the block; the forward pass gets one padded
``(batch, kv_heads, longest head, head_dim)`` copy of the layer, built once per step and
freed with the layer's attention. Rows of a batch (and heads) that keep fewer entries than
the longest have *invalid* filler slots at the front; the attention hooks (``masks.py``) mask
them, per layer, from :meth:`CompressedLayer.slot_valid`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from ..errors import UsageError

GROW_SLOTS = 32    # a full per-head block grows by max(GROW_SLOTS, 1/16 of its length)


def _front_aligned_gather(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a keep mask (..., T) return (indices (..., width), valid (..., width)): the kept
    positions in ascending order, right-aligned, with invalid filler slots in front."""
    t = mask.shape[-1]
    pos = torch.arange(t, device=mask.device)
    order = torch.sort(torch.where(mask, pos + t, pos), dim=-1, stable=True).indices
    idx = order[..., t - width:] if width else order[..., :0]
    return idx, torch.gather(mask, -1, idx)


class CompressedLayer(DynamicLayer):
    """One full-attention layer whose stored entries can be evicted.

    Per-head storage (``heads`` is not None) is a list of one dict per KV head: ``k``/``v``
    (B, capacity, D) buffers whose first ``length`` slots are live, ``pos`` (B, S0) token
    positions and ``valid`` (B, S0) or None for the slots kept at the last eviction. Slots
    appended since then (``appended``, the same on every head) are real, at implicit positions.
    """

    is_sliding = False

    def __init__(self, sliding_window: int | None = None) -> None:
        super().__init__()
        self.sliding_window = sliding_window   # model-wide (no layer_types): see decode.slide
        self.seen = 0
        self.valid: torch.Tensor | None = None       # (B, S) or None when every slot is real
        self._pos: torch.Tensor | None = None        # (B, H, S0) positions of the slots kept
        self.appended = 0                            # slots added since (positions implicit)
        self.heads: list[dict] | None = None         # per-head blocks once heads differ
        self.compressed = False
        self._slot_valid: torch.Tensor | None = None  # per-head validity, until the next change

    # --- transformers' layer API ------------------------------------------------------
    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, q, _ = key_states.shape
        if self.heads is not None:
            out = self._update_ragged(key_states, value_states)
            self.seen += q
            self.appended += q
            return out
        self.seen += q
        self.appended += q
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
        """(B, H, S) token position of each stored slot (filler slots of per-head storage
        read 0; :meth:`slot_valid` says which are real)."""
        if self.heads is not None:
            return self._padded_positions()
        if self.keys is None or self.keys.numel() == 0:
            return None
        b, h = self.keys.shape[:2]
        tail = self._tail_positions(b, h, self.keys.device)
        return tail.clone() if self._pos is None else torch.cat([self._pos, tail], dim=-1)

    def _length(self, blk: dict) -> int:
        """Live slots of one per-head block (its filler slots included)."""
        return blk["pos"].shape[1] + self.appended

    def stored_length(self) -> int:
        """Slots a forward pass sees for this layer (the longest head in per-head storage)."""
        if self.heads is not None:
            return max(self._length(blk) for blk in self.heads)
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
        """Apply a batch-axis operation (beam reorder, repeat, select) to everything stored."""
        self._slot_valid = None
        if self.heads is not None:
            for blk in self.heads:
                for key in ("k", "v", "pos", "valid"):
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

    # --- per-head storage --------------------------------------------------------------
    def _update_ragged(self, key_states, value_states):
        """Append the new slots to every head's block in place (growing a full block by a
        chunk), then return the layer padded to the longest head for the forward pass."""
        q = key_states.shape[2]
        for j, blk in enumerate(self.heads):
            n = self._length(blk)
            self._append(blk, "k", key_states[:, j], n)
            self._append(blk, "v", value_states[:, j], n)
        self._slot_valid = None
        width = self.stored_length() + q
        return self._padded("k", width, q), self._padded("v", width, q)

    @staticmethod
    def _append(blk: dict, name: str, new: torch.Tensor, n: int) -> None:
        buf, q = blk[name], new.shape[1]
        if new.requires_grad or (buf.is_inference() and not torch.is_inference_mode_enabled()):
            # autograd (or an inference tensor outside inference mode) forbids in-place writes
            blk[name] = torch.cat([buf[:, :n], new], dim=1)
            return
        if n + q > buf.shape[1]:
            grown = buf.new_empty(buf.shape[0], n + q + max(GROW_SLOTS, (n + q) // 16),
                                  buf.shape[2])
            grown[:, :n] = buf[:, :n]
            blk[name] = buf = grown
        buf[:, n:n + q] = new

    def _padded(self, name: str, width: int, extra: int = 0) -> torch.Tensor:
        """(B, H, width, ...) copy of every head's live slots, right-aligned, zeros in front
        (``extra`` slots just appended count as live)."""
        first = self.heads[0][name]
        out = first.new_empty(first.shape[0], len(self.heads), width, *first.shape[2:])
        for j, blk in enumerate(self.heads):
            n = self._length(blk) + extra
            out[:, j, : width - n] = 0
            out[:, j, width - n:] = blk[name][:, :n]
        return out

    # --- eviction --------------------------------------------------------------------
    def slot_valid(self) -> torch.Tensor | None:
        """(B, H, S) validity of the slots a forward pass sees, or None if all are real."""
        if self.heads is None:
            return None if self.valid is None else self.valid[:, None, :].expand(
                -1, self.keys.shape[1], -1)
        if self._slot_valid is None:
            width = self.stored_length()
            first = self.heads[0]["k"]
            out = torch.zeros(first.shape[0], len(self.heads), width, dtype=torch.bool,
                              device=first.device)
            for j, blk in enumerate(self.heads):
                n = self._length(blk)
                out[:, j, width - n:] = True
                if blk["valid"] is not None:
                    out[:, j, width - n: width - n + blk["valid"].shape[1]] = blk["valid"]
            self._slot_valid = out
        return self._slot_valid

    def dense_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values, positions) padded to (B, H, S, ...) for scoring (a copy for
        per-head storage: filler slots hold zeros)."""
        if self.heads is None:
            return self.keys, self.values, self.positions
        width = self.stored_length()
        return self._padded("k", width), self._padded("v", width), self._padded_positions()

    def _padded_positions(self) -> torch.Tensor:
        """(B, H, S) positions of per-head storage, right-aligned, 0 in filler slots."""
        width = self.stored_length()
        first = self.heads[0]["pos"]
        b = first.shape[0]
        tail = self._tail_positions(b, 1, first.device)[:, 0]
        pos = torch.zeros(b, len(self.heads), width, dtype=first.dtype, device=first.device)
        for j, blk in enumerate(self.heads):
            n = self._length(blk)
            pos[:, j, width - n:] = torch.cat([blk["pos"], tail], dim=1)
        return pos

    def retain(self, mask: torch.Tensor) -> None:
        """Keep only the slots where ``mask`` (B, H, S) is true; everything else is freed."""
        keys, values, positions = self.dense_view()
        valid = self.slot_valid()
        if valid is not None:
            mask = mask & valid
        counts = mask.sum(-1)                                   # (B, H)
        b, h = counts.shape
        self._slot_valid = None
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
        else:                                                   # per-head blocks, no spare room
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
            self.valid = self._pos = None
        self.appended = 0
        self.compressed = True

    # --- accounting ------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of keys and values held: filler slots of short rows and heads included, and
        for per-head blocks the room reserved for the next decode steps."""
        if self.heads is not None:
            return sum(blk["k"].nbytes + blk["v"].nbytes for blk in self.heads)
        if self.keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    def entries(self) -> int:
        """Real (valid) key-value entries stored, summed over batch rows and heads."""
        if self.heads is not None:
            total = 0
            for blk in self.heads:
                b, kept = blk["pos"].shape
                total += int(blk["valid"].sum()) if blk["valid"] is not None else b * kept
                total += b * self.appended
            return total
        if self.keys is None or self.keys.numel() == 0:
            return 0
        b, h, s, _ = self.keys.shape
        return h * (int(self.valid.sum()) if self.valid is not None else b * s)


class CompressedCache(Cache):
    """A cache whose full-attention layers are :class:`CompressedLayer`; the sliding-window
    layers of a model that mixes both (Gemma 3's ``layer_types``) keep transformers' own
    bounded layer. A model whose config has one ``sliding_window`` for every layer and no
    ``layer_types`` (Mistral's default config) gets compressed layers that also honour the
    window (entries that slid out are dropped), so compression is never a silent no-op."""

    def __init__(self, config, plan=None) -> None:
        text = config.get_text_config(decoder=True)
        window = getattr(text, "sliding_window", None)
        given = getattr(text, "layer_types", None)
        types = given or ["full_attention"] * text.num_hidden_layers
        model_wide = window if not given else None
        layers = [DynamicSlidingWindowLayer(window)
                  if t in ("sliding_attention", "chunked_attention")
                  else CompressedLayer(model_wide) for t in types]
        super().__init__(layers=layers)
        self.plan = plan
        self.prefilled = False          # the first forward (the context) has been compressed
        self.pending: dict = {}         # global-pool policies: layers scored, not yet evicted
        self.shared: dict = {}          # policy state shared across layers (ChunkKV reuse)
        self.n_real = self.row_start = None
        self.surprisal = None           # (B, T) the context's surprisal ('information')
        self.chunking = False           # Session.prefill: each forward is one more chunk
        self.context_tokens = None      # the whole context's length while chunking
        self.tail = None                # (hidden, id) of the last chunk's last token
        self.peak_bytes = 0             # most bytes held at once: KV + scoring state (hooks)

    # batch-axis operations must move the per-row bookkeeping with the rows
    def _map_rows(self, fn) -> None:
        if self.n_real is not None:
            self.n_real, self.row_start = fn(self.n_real), fn(self.row_start)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self._map_rows(lambda t: t[indices, ...])

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

    def held_bytes(self) -> int:
        """Bytes of the scoring state the cache holds besides its KV (layers waiting for a
        deferred or global allocation, the final hidden states, the surprisal), counted by
        storage: a view holds all of the tensor it is a view of."""
        kv = {id(t) for layer in self.layers for t in _kv_tensors(layer)}
        kv_storages = {t.untyped_storage().data_ptr() for layer in self.layers
                       for t in _kv_tensors(layer)}
        found: dict[int, int] = {}
        for t in _tensors((self.pending, self.shared, self.surprisal)):
            if id(t) in kv:
                continue
            st = t.untyped_storage()
            if st.data_ptr() not in kv_storages:
                found[st.data_ptr()] = st.nbytes()
        return sum(found.values())

    def note_peak(self, extra: int = 0) -> None:
        """Record what the cache holds now (KV + scoring state, + ``extra`` transient bytes)."""
        self.peak_bytes = max(self.peak_bytes, self.nbytes() + self.held_bytes() + extra)

    def entries(self) -> int:
        """Key-value entries held by the compressible layers (rows x heads x tokens)."""
        return sum(layer.entries() for layer in self.layers if isinstance(layer, CompressedLayer))

    def seen(self) -> int:
        return self.get_seq_length()


def _kv_tensors(layer) -> list[torch.Tensor]:
    """The key / value tensors a layer stores (dense or per-head blocks)."""
    out = [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
           if torch.is_tensor(t)]
    for blk in getattr(layer, "heads", None) or ():
        out += [blk["k"], blk["v"]]
    return out


def _tensors(obj, seen: set | None = None):
    """Every tensor inside plain containers and objects' attributes (modules skipped)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, torch.nn.Module) or obj is None:
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        yield obj
        return
    if isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, list | tuple):
        children = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = vars(obj).values()
    else:
        return
    for c in children:
        yield from _tensors(c, seen)
