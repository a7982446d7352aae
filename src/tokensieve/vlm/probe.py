"""A cheap look at what the language model attends to: run one prompt with only a few of an
image's visual tokens through the first layers of the language model and read, at a chosen
decoder layer, the attention the prompt's last token pays to each of those tokens.

Used before the language model (``Visual.probe``) by the ``probe`` method: a small VLM only
looks at the part of the image a question names deep in its stack (``tokensieve bench
vlm-layers``), where pruning no longer saves anything; a probe on a subset of the tokens sees
that look at a fraction of the cost, before the real prefill. The probe never touches the
caller's KV cache and stops at the layer it reads.
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from .layer_attention import attention_to
from .sequence import compact, take


class _Reached(Exception):
    """Raised by the pre-hook on the probed layer: the layers after it are not run."""

    def __init__(self, hidden, position_embeddings):
        super().__init__()
        self.hidden, self.position_embeddings = hidden, position_embeddings


def depth_layer(depth: float, n_layers: int) -> int:
    """The decoder layer at ``depth`` (0 = first, 1 = last) of ``n_layers``."""
    return min(n_layers - 1, max(0, round(depth * n_layers)))


class Probe:
    """``probe(idx, depth)`` for one image of one batch row: (len(idx),) head-mean attention
    of the row's last token, at the decoder layer at ``depth``, to the image's visual tokens
    ``idx`` (indices within the image), on the row with this image's other tokens removed
    (positions kept, as the pruned prefill will have them).

    ``embeds`` (1, L, D): the row's input embeddings with the visual tokens in place;
    ``positions``: its position ids ((1, L), or (k, 1, L) for M-RoPE); ``valid`` (1, L);
    ``image_cols`` (N,): the image's positions in the row; ``language_model``: the decoder
    stack (with ``layers``)."""

    def __init__(self, language_model, embeds, positions, valid, image_cols):
        self.lm, self.embeds, self.positions = language_model, embeds, positions
        self.valid, self.image_cols = valid.bool(), image_cols

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, depth: float) -> torch.Tensor:
        n = self.image_cols.shape[0]
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise UsageError(f"a probe needs visual token indices in [0, {n}), got "
                             f"{idx.numel()} of them")
        layer = depth_layer(depth, len(self.lm.layers))
        keep = self.valid.clone()
        drop = torch.ones(n, dtype=torch.bool)
        drop[idx] = False
        keep[0, self.image_cols[drop].to(keep.device)] = False
        kept = compact(keep)
        embeds = take(self.embeds, kept)
        positions = take(self.positions, kept, self.positions.dim() - 1)
        reached = self._run(embeds, positions, layer)
        probed = self.image_cols[idx.sort().values].to(kept.idx.device)
        columns = torch.searchsorted(kept.idx[0], probed)
        last = torch.tensor([kept.width - 1], device=embeds.device)
        valid = torch.ones(kept.width, dtype=torch.bool, device=embeds.device)
        att = attention_to(self.lm.layers[layer], reached.hidden, reached.position_embeddings,
                           0, valid, last, columns.to(embeds.device))[0]
        out = torch.empty(idx.numel(), dtype=att.dtype, device=att.device)
        out[idx.argsort()] = att      # back to the caller's order of idx
        return out.cpu()

    def _run(self, embeds, positions, layer: int) -> _Reached:
        def stop(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            raise _Reached(hidden, kwargs.get("position_embeddings"))

        handle = self.lm.layers[layer].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.lm(inputs_embeds=embeds, position_ids=positions, use_cache=False,
                    attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                              device=embeds.device))
        except _Reached as r:
            if r.position_embeddings is None:
                raise UsageError(f"{type(self.lm).__name__} does not hand its decoder "
                                 "layers position embeddings; the probe cannot read its "
                                 "attention.") from None
            return r
        finally:
            handle.remove()
        raise UsageError("the probe's layer never ran; the language model skipped it.")
