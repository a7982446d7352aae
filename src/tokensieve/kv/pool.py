"""Global pool: layers scored during the prefill share one budget, allocated across them
once the forward has scored every layer, then each layer is evicted to its share."""

from __future__ import annotations

from .cache import CompressedCache


def finish_global(cache: CompressedCache) -> None:
    """Allocate the global pool across the scored layers and evict."""
    plan = cache.plan
    info = {i: entry[2] for i, entry in cache.pending.items()}
    counts = plan.allocate_layers(info, cache.n_real)
    for i, (x, scores, _) in cache.pending.items():
        cache.layers[i].retain(plan.select(x, counts[i], scores))
