"""The repeat pass of the ``reconstruct`` policy: after the prefill, feed the context again
(teacher-forced, in chunks) on top of its full cache and record, for every stored entry, the
most attention a repeating query gives it; then evict every pending layer by that score.

The pass runs the model's own decoder with the compression hooks paused, on a plain
transformers cache rebuilt from the context's entries for each chunk (a chunk sees the whole
context and its own earlier tokens). Attention is recomputed per KV head and in query chunks
from the layer's own query projection (``project_queries``), so the full attention matrix of a
chunk is never held: at most ``LayerInputs.chunk_elements`` probabilities at once. While
scoring, the pass holds a second copy of the context's KV plus one chunk."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..engine.select import quantise
from ..errors import UsageError
from ..scoring.units import unit_reduce
from .attention import LayerInputs, project_queries
from .cache import CompressedCache
from .plan import Slots
from .prefill import share_units


def _chunk_scores(module, hidden, cos, sin, ctx_keys: torch.Tensor, own_keys: torch.Tensor,
                  ctx_ok: torch.Tensor, q_ok: torch.Tensor, reduce: str) -> torch.Tensor:
    """(B, H_kv, n): per scored context entry, the max (or summed) attention of the chunk's
    valid queries, the softmax running over the ``n`` context keys ``ctx_keys`` (B, H_kv, n,
    D) that ``ctx_ok`` (B, n) allows and the chunk's own keys ``own_keys`` (B, H_kv, c, D),
    causally; ``q_ok`` (B, c) marks valid queries (and keys) of the chunk."""
    q = project_queries(module, hidden, cos, sin)                   # (B, Hq, c, D)
    b, _, c, _ = q.shape
    h, n = ctx_keys.shape[1], ctx_keys.shape[2]
    g = q.shape[1] // h
    keys = torch.cat([ctx_keys, own_keys], 2)
    ok = torch.cat([ctx_ok, q_ok], 1)                                # (B, n + c)
    step = max(1, min(c, LayerInputs.chunk_elements // max(1, b * g * (n + c))))
    own_pos = torch.arange(c, device=q.device)
    out = torch.zeros(b, h, n, dtype=torch.float32, device=q.device)
    for j in range(h):
        k = keys[:, j].float().transpose(-1, -2)[:, None]           # (B, 1, D, n + c)
        for a in range(0, c, step):
            m = min(step, c - a)
            logits = torch.matmul(q[:, j * g:(j + 1) * g, a:a + m].float(), k)
            logits.mul_(module.scaling)                              # (B, g, m, n + c)
            causal = own_pos[None, :] <= torch.arange(a, a + m, device=q.device)[:, None]
            allowed = torch.cat([torch.ones(m, n, dtype=torch.bool, device=q.device),
                                 causal], 1)[None] & ok[:, None, :]  # (B, m, n + c)
            logits.masked_fill_(~allowed[:, None], float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num_(nan=0.0)[..., :n]
            probs = probs * q_ok[:, None, a:a + m, None]             # padded queries count 0
            del logits
            if reduce == "max":
                out[:, j] = torch.maximum(out[:, j], probs.amax(dim=(1, 2)))
            else:
                out[:, j] += probs.sum(dim=(1, 2))
    return out


@torch.no_grad()
def repeat_scores(model, modules, cache: CompressedCache, ids: torch.Tensor, valid: torch.Tensor,
                  chunk: int, reduce: str, local_sinks: int | None = None
                  ) -> dict[int, torch.Tensor]:
    """{layer: (B, H_kv, T) score} of every pending layer from one repeat pass of ``ids``.
    ``local_sinks``: normalise over the first that many real entries, the span the chunk
    repeats and the chunk (None: over the whole context)."""
    b, t = ids.shape
    pending = cache.pending
    captured: dict[int, tuple] = {}
    scores = {i: None for i in pending}
    context = {}
    for i, layer in enumerate(cache.layers):
        if i in pending:
            x = pending[i][0]
            context[i] = (x.keys, x.values)
        else:
            context[i] = (layer.keys, layer.values)

    def pre(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        captured[module.layer_idx] = (hidden, *kwargs["position_embeddings"])

    handles = []
    try:
        for m in modules:
            if m.layer_idx in pending:
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        decoder = model.get_decoder()
        n_real = valid.sum(-1)
        row_start = t - n_real                      # left padding: real tokens come last
        for a in range(0, int(n_real.max()), chunk):
            # chunk k of every row = its real tokens [a, a + c), padded on the right
            c = min(chunk, int(n_real.max()) - a)
            step = torch.arange(a, a + c, device=ids.device)[None]
            idx = row_start[:, None] + step
            q_ok = idx < t
            c_ids = ids.gather(1, idx.clamp_max(t - 1))
            past = DynamicCache(config=model.config)
            for i, (k, v) in context.items():
                past.update(k, v, i)
            key_ok = torch.cat([valid, q_ok], 1)
            scored = key_ok
            if local_sinks is not None:   # KVzip's window: sinks, the span repeated, the chunk
                rank = valid.long().cumsum(-1) - 1                       # (B, t) real rank
                window = valid & ((rank < local_sinks) | ((rank >= a) & (rank < a + c)))
                scored = torch.cat([window, q_ok], 1)
            scored = scored[:, :t]
            cols = scored.any(0).nonzero().flatten()   # context columns any row scores over
            pos = n_real[:, None] + step            # positions counted from the first real token
            captured.clear()
            layer_scores = {}

            def post(module, args, kwargs, output, _past=past, scored=scored, q_ok=q_ok,
                     layer_scores=layer_scores, cols=cols):
                i = module.layer_idx
                hidden, cos, sin = captured.pop(i)
                keys = _past.layers[i].keys
                part = _chunk_scores(module, hidden, cos, sin, keys[:, :, cols], keys[:, :, t:],
                                     scored[:, cols], q_ok, reduce)
                full = torch.zeros(part.shape[0], part.shape[1], t, device=part.device)
                layer_scores[i] = full.index_copy_(2, cols, part)
            post_handles = [m.register_forward_hook(post, with_kwargs=True)
                            for m in modules if m.layer_idx in pending]
            try:
                decoder(input_ids=c_ids, attention_mask=key_ok.long(), position_ids=pos,
                        past_key_values=past, use_cache=True)
            finally:
                for h in post_handles:
                    h.remove()
            cache.note_peak(sum(la.keys.nbytes + la.values.nbytes for la in past.layers
                                if getattr(la, "keys", None) is not None))
            del past
            for i, s in layer_scores.items():
                prev = scores[i]
                scores[i] = s if prev is None else (torch.maximum(prev, s) if reduce == "max"
                                                    else prev + s)
    finally:
        for h in handles:
            h.remove()
    return scores


def finish_repeat(model, modules, cache: CompressedCache) -> None:
    """Score the pending layers by the repeat pass, then evict each to the plan's share."""
    ids = cache.shared.pop("input_ids", None)
    if ids is None:
        raise UsageError("the 'reconstruct' KV policy repeats the context's token ids; call "
                         "the model with input_ids, not inputs_embeds.")
    plan = cache.plan
    policy = plan.policy
    x0 = next(iter(cache.pending.values()))[0]
    valid = x0.valid if x0.valid.dim() == 2 else x0.valid.any(1)
    scores = repeat_scores(model, modules, cache, ids, valid, policy.repeat_chunk,
                           policy.reduce, policy.sinks if policy.local else None)
    order = cache.compressible_layers()
    shares = _global_shares(plan, scores, valid, cache.n_real) if policy.pool == "global" \
        else None
    for i, (x, _, _) in cache.pending.items():
        counts = plan.keep_counts(cache.n_real, order.index(i), len(order)) if shares is None \
            else shares[i]
        if not policy.units:
            cache.layers[i].retain(plan.select(x, counts, scores[i]))
            continue
        slots = Slots.prefill(x.valid)
        share_units(x, plan, slots)
        units = x.shared["units"]
        if units is None:   # chunks of the row's real tokens
            rank = x.shared["rank"]
            units = torch.where(rank >= 0, rank // policy.unit_chunk, -1)
        s = unit_reduce(scores[i].mean(1), units, "mean")
        s = s[:, None, :].expand(-1, scores[i].shape[1], -1)
        # ties (the tokens of one unit) go to the later token: a cut unit keeps its end
        cache.layers[i].retain(plan.select(x, counts, s, slots=slots, prefer="late"))


def _global_shares(plan, scores: dict[int, torch.Tensor], valid: torch.Tensor,
                   n_real: torch.Tensor) -> dict[int, torch.Tensor]:
    """Entries per head each layer keeps when one pool (budget x layers x heads) goes to the
    top scores over every layer and head: a layer's share is weighted by how many of the
    pool's top scores it holds (every layer keeps at least sinks + recent per head)."""
    layers = sorted(scores)
    held = {i: torch.zeros_like(n_real, dtype=torch.float32) for i in layers}
    for row in range(n_real.shape[0]):
        stack = torch.stack([scores[i][row] for i in layers])             # (L, H, T)
        stack = stack.masked_fill(~valid[row][None, None], float("-inf"))
        k = plan.budget(int(n_real[row])) * stack.shape[1] * len(layers)
        # a stable sort of quantised scores: the same top set whatever the thread count
        top = torch.sort(quantise(stack.flatten()), descending=True, stable=True).indices[:k]
        per_layer = torch.bincount(top // (stack.shape[1] * stack.shape[2]),
                                   minlength=len(layers))
        for j, i in enumerate(layers):
            held[i][row] = float(per_layer[j]) + 1e-6
    return plan.allocate_layers(held, n_real)
