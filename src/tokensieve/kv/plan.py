"""How much of a layer to keep and which entries: budget (``keep`` fraction, per-layer
share, ``max_size`` cap) -> protection (sinks, recent window, user spans, charged first) ->
selection (the engine's forced-first top-k, per head, or jointly over heads / layers for
adaptive policies). The same rules apply at prefill and at decode-time eviction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.budget import check_keep, keep_count, split_pool
from ..engine.select import select_top_k
from ..errors import BudgetError, UsageError
from ..spans import check_spans
from .attention import LayerInputs
from .policies import Policy, get_policy


@dataclass
class Slots:
    """Where the slots of one layer stand: ``valid`` (B, H|1, T) real entries (not padding
    or filler), ``rank`` (B, H|1, T) each slot's position among the row's real context tokens
    (0 = first real token), ``seen`` (B,) real tokens the row has seen so far."""

    valid: torch.Tensor
    rank: torch.Tensor
    seen: torch.Tensor

    @classmethod
    def prefill(cls, valid: torch.Tensor) -> Slots:
        """Slots of a fresh prefill: ``valid`` (B, T) or (B, H, T)."""
        v = valid if valid.dim() == 3 else valid[:, None, :]
        real = v.any(1, keepdim=True)
        return cls(v, real.long().cumsum(-1) - 1, real.sum(-1)[:, 0])

    @classmethod
    def stored(cls, valid: torch.Tensor, positions: torch.Tensor, row_start: torch.Tensor,
               seen: int) -> Slots:
        """Slots of a stored layer: token ``positions`` (B, H, S), first real position of
        each row ``row_start`` (B,), ``seen`` tokens so far (padding included)."""
        return cls(valid, positions - row_start[:, None, None], seen - row_start)


@dataclass
class Plan:
    """What a compressed cache does: the policy, the fraction kept, and what is protected.

    ``keep`` is the fraction of the context's entries *kept* (the library-wide convention):
    0.25 keeps a quarter, 1.0 keeps everything (nothing is touched). ``sinks`` first and
    ``recent`` last tokens are never evicted (both shrink to fit small budgets), nor any
    token span in ``protect`` (start, end) in context-token positions. Spans in ``whole``
    (multi-token numbers, IDs) are kept whole or evicted whole, never cut. ``units`` (e.g.
    sentences) group tokens for unit-level policies (``information``). ``max_size`` caps
    the entries per head during generation (decode-time eviction, same rules).
    """

    policy: Policy
    keep: float
    sinks: int = 4
    recent: int = 32
    window: int = 32
    protect: tuple[tuple[int, int], ...] = ()
    whole: tuple[tuple[int, int], ...] = ()
    units: tuple[tuple[int, int], ...] = ()
    max_size: int | None = None
    seed: int = 0

    @classmethod
    def build(cls, policy="default", keep=0.5, **kw) -> Plan:
        keep = check_keep(keep)
        for name in ("sinks", "recent", "window"):
            v = kw.get(name, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"{name} must be a whole number >= 0, got {v!r}.")
        sinks = kw.get("sinks", 4)
        ms = kw.get("max_size")
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, int) or ms <= sinks):
            raise UsageError(f"max_size must be a whole number of entries larger than the "
                             f"{sinks} sink tokens (so the newest token always fits), got {ms!r}.")
        protect = tuple(check_spans(kw.pop("protect", None), "protect", unit="token positions"))
        whole = tuple(check_spans(kw.pop("whole", None), "whole", unit="token positions"))
        units = tuple(check_spans(kw.pop("units", None), "units", unit="token positions"))
        for (_, b), (a, _) in zip(units, units[1:], strict=False):
            if a < b:
                raise UsageError(f"units must not overlap; ({a}, ...) starts before {b}.")
        return cls(policy=get_policy(policy), keep=keep, protect=protect, whole=whole,
                   units=units, **kw)

    def protected_count(self) -> int:
        return len({i for a, b in self.protect for i in range(a, b)})

    def check_context(self, n_real: torch.Tensor) -> None:
        """User spans must lie inside the context, and protected ones fit the budget."""
        shortest = int(n_real.min())
        for a, b in (*self.protect, *self.whole):
            if b > shortest:
                raise UsageError(f"span ({a}, {b}) reaches past the context, which has "
                                 f"{shortest} tokens; give positions inside it.")
        protected = self.protected_count()
        budget = self.budget(shortest)
        if protected > budget:
            raise BudgetError(
                f"protected spans hold {protected} tokens but the budget keeps {budget} of "
                f"{shortest} (over by {protected - budget}); raise keep or protect less.")
        if self.max_size is not None and protected >= self.max_size:
            raise BudgetError(
                f"protected spans hold {protected} tokens but max_size caps the cache at "
                f"{self.max_size} entries (the newest token needs one); raise max_size or "
                "protect less.")

    # --- budget --------------------------------------------------------------------------
    def budget(self, n: int) -> int:
        """Entries per head one layer keeps on average for a context of ``n`` tokens."""
        return keep_count(self.keep, n)

    def keep_counts(self, n_real: torch.Tensor, layer: int, num_layers: int) -> torch.Tensor:
        """Entries per head layer number ``layer`` (of ``num_layers`` compressible ones)
        keeps for each row (B,). Per-layer shares (PyramidKV) split the same total pool."""
        shares = np.array([self.policy.layer_share(i, num_layers) for i in range(num_layers)])
        out = []
        for n in n_real.tolist():
            if np.allclose(shares, 1.0):
                out.append(self.budget(n))
            else:
                # one entry each first, so no layer is left empty and the pool still holds
                alloc = split_pool((self.budget(n) - 1) * num_layers, shares,
                                   caps=np.full(num_layers, n - 1))
                out.append(1 + int(alloc[layer]))
        return torch.tensor(out, dtype=torch.long, device=n_real.device)

    def _user(self, slots: Slots) -> torch.Tensor:
        """(B, H|1, T) slots inside a user ``protect`` span."""
        user = torch.zeros_like(slots.valid)
        for a, b in self.protect:
            user |= slots.valid & (slots.rank >= a) & (slots.rank < b)
        return user

    def forced(self, slots: Slots, counts: torch.Tensor) -> torch.Tensor:
        """(B, H|1, T) entries that must stay: user spans, then sinks and the recent window,
        which shrink so that everything forced fits ``counts`` (B,)."""
        rank, valid = slots.rank, slots.valid
        user = self._user(slots)
        room = (counts[:, None, None] - user.sum(-1, keepdim=True)).clamp_min(0)
        sinks = room.clamp(max=self.sinks)
        recent = (room - sinks).clamp(min=0, max=self.recent)
        n = slots.seen[:, None, None]
        return user | (valid & ((rank < sinks) | (rank >= n - recent)))

    # --- selection -----------------------------------------------------------------------
    def select(self, x: LayerInputs, counts: torch.Tensor, scores: torch.Tensor | None = None,
               slots: Slots | None = None, prefer: str = "early") -> torch.Tensor:
        """Keep mask (B, H, T) for one layer keeping ``counts`` (B,) entries per head.
        ``prefer="late"`` breaks ties toward newer entries (decode-time eviction)."""
        if scores is None:
            scores = self.policy.score(x)
        slots = slots or Slots.prefill(x.valid)
        valid = slots.valid.expand_as(scores)
        forced = self.forced(slots, counts) & valid
        spans = self._span_ids(slots)
        forced = self._whole_forced(forced, slots, spans)
        s = scores.float().masked_fill(~valid, float("-inf"))
        s = self._whole_scores(s, spans)
        if self.policy.head_adaptive and s.shape[1] > 1:
            keep = self._select_heads(s, counts, forced, prefer)
        else:
            keep = select_top_k(s, counts[:, None], forced, prefer=prefer)
        return self._whole_keep(keep & valid, forced, spans)

    @staticmethod
    def _index_in(spans, slots: Slots) -> torch.Tensor:
        """(B, H|1, T) index of the span (sorted, not overlapping) each slot is in, or -1."""
        rank = slots.rank
        starts = torch.tensor([a for a, _ in spans], device=rank.device)
        ends = torch.tensor([b for _, b in spans], device=rank.device)
        idx = torch.searchsorted(starts, rank.contiguous(), right=True) - 1
        inside = slots.valid & (idx >= 0) & (rank < ends[idx.clamp_min(0)])
        return torch.where(inside, idx, -1)

    def _span_ids(self, slots: Slots) -> torch.Tensor | None:
        """(B, H|1, T) 1 + index of the ``whole`` span each slot is in, 0 outside spans."""
        return self._index_in(self.whole, slots) + 1 if self.whole else None

    def unit_ids(self, slots: Slots) -> torch.Tensor | None:
        """(B, T) index of the unit each slot is in (-1 outside units), None without units."""
        return self._index_in(self.units, slots)[:, 0] if self.units else None

    def _span_stats(self, mask: torch.Tensor, spans: torch.Tensor):
        """Per span (index 0 = outside spans): how many slots of ``mask`` it holds, and its
        size, as (B, H, n_spans + 1) each."""
        ids = spans.expand_as(mask)
        zeros = torch.zeros((*mask.shape[:2], len(self.whole) + 1), device=mask.device)
        return (zeros.scatter_add(-1, ids, mask.float()),
                zeros.scatter_add(-1, ids, (ids > 0).float()))

    def _whole_forced(self, forced: torch.Tensor, slots: Slots,
                      spans: torch.Tensor | None) -> torch.Tensor:
        """A whole span the sink or recent window cuts through is not forced at all (it then
        competes as a unit); one holding user-protected text is forced whole."""
        if spans is None:
            return forced
        ids = spans.expand_as(forced)
        user = self._user(slots)
        n_forced, size = self._span_stats(forced, spans)
        n_user, _ = self._span_stats(user.expand_as(forced), spans)
        cut = (n_forced > 0) & (n_forced < size)
        cut[..., 0] = False
        whole_user = n_user > 0
        whole_user[..., 0] = False
        forced = forced & ~torch.gather(cut, -1, ids)
        return forced | (torch.gather(whole_user, -1, ids) & slots.valid.expand_as(forced))

    def _whole_scores(self, s: torch.Tensor, spans: torch.Tensor | None) -> torch.Tensor:
        """Every slot of a whole span gets the span's best score (ties: earlier first)."""
        if spans is None:
            return s
        ids = spans.expand_as(s)
        best = torch.full((*s.shape[:2], len(self.whole) + 1), float("-inf"), device=s.device)
        best = best.scatter_reduce(-1, ids, s, reduce="amax")
        return torch.where(ids > 0, torch.gather(best, -1, ids), s)

    def _whole_keep(self, keep: torch.Tensor, forced: torch.Tensor,
                    spans: torch.Tensor | None) -> torch.Tensor:
        """A span the budget cut in two loses its unforced slots (forced ones always stay)."""
        if spans is None:
            return keep
        ids = spans.expand_as(keep)
        kept, size = self._span_stats(keep, spans)
        cut = (kept > 0) & (kept < size)
        cut[..., 0] = False
        return (keep & ~torch.gather(cut, -1, ids)) | (forced & keep)

    def _select_heads(self, s: torch.Tensor, counts: torch.Tensor, forced: torch.Tensor,
                      prefer: str) -> torch.Tensor:
        """AdaKV: a floor per head, then the rest of the layer's pool by score over heads."""
        b, h, t = s.shape
        floor = torch.ceil(counts.double() * self.policy.floor).long()
        keep = select_top_k(s, floor[:, None], forced, prefer=prefer)
        rest = (counts * h - keep.sum((1, 2))).clamp_min(0)
        flat = s.masked_fill(keep, float("-inf")).reshape(b, h * t)
        keep |= select_top_k(flat, rest, prefer=prefer).reshape(b, h, t) & torch.isfinite(s)
        return keep

    def allocate_layers(self, informativeness: dict[int, torch.Tensor],
                        n_real: torch.Tensor) -> dict[int, torch.Tensor]:
        """Split one pool (budget x layers) across layers by informativeness (B,); every
        layer keeps at least sinks + recent (capped by its mean budget, so the pool holds)."""
        layers = sorted(informativeness)
        out = {i: torch.zeros_like(n_real) for i in layers}
        for row in range(n_real.shape[0]):
            n = int(n_real[row])
            per_layer = self.budget(n)
            total = per_layer * len(layers)
            w = np.array([float(informativeness[i][row]) for i in layers])
            floor = min(per_layer, self.sinks + self.recent)
            alloc = split_pool(total - floor * len(layers), w,
                               caps=np.full(len(layers), n - floor)) + floor
            for i, a in zip(layers, alloc, strict=True):
                out[i][row] = int(a)
        return out
