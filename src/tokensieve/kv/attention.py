"""What a policy may look at for one layer: its keys and values, and the attention of an
*observation window* of queries (the last few tokens) over all keys. The full T x T attention
matrix is never built; the model itself keeps running with sdpa or eager."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text")


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules of a decoder, in layer order."""
    found = [m for _, m in model.named_modules()
             if hasattr(m, "layer_idx") and hasattr(m, "o_proj")
             and (hasattr(m, "q_proj") or hasattr(m, "qkv_proj"))]
    return sorted(found, key=lambda m: m.layer_idx)


def project_queries(module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Queries (B, Hq, w, D) of ``hidden`` (B, w, hidden) with the module's own projection,
    query norm and rotary embedding (RoPE tables ``cos``/``sin`` of those w positions)."""
    b, w, _ = hidden.shape
    d = module.head_dim
    if hasattr(module, "q_proj"):
        q = module.q_proj(hidden)
    else:  # fused projection (Phi-3)
        q = module.qkv_proj(hidden)[..., : module.config.num_attention_heads * d]
    q = q.view(b, w, -1, d).transpose(1, 2)
    if hasattr(module, "q_norm"):
        q = module.q_norm(q)
    rope = sys.modules[type(module).__module__].apply_rotary_pos_emb
    return rope(q, q, cos, sin)[0]


@dataclass
class LayerInputs:
    """Everything a policy may score one layer with. ``keys``/``values`` are (B, H, T, D),
    ``valid`` (B, T) or (B, H, T) marks real slots (not padding), ``window`` is the size of
    the observation window."""

    module: torch.nn.Module
    layer_idx: int
    num_layers: int
    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    window: int = 32
    seed: int = 0
    shared: dict = field(default_factory=dict)   # state shared across layers of one pass
    _attn: dict = field(default_factory=dict)
    chunk_elements: ClassVar[int] = 1 << 22       # float32 logits per chunk (16 MiB)

    @property
    def groups(self) -> int:
        return self.module.config.num_attention_heads // self.keys.shape[1]

    def window_attention(self, w: int | None = None, reduce: str | None = None) -> torch.Tensor:
        """Attention probabilities (B, H_kv, w, T) of the last ``w`` queries over all keys,
        averaged over the query heads that share a KV head. Causal and padding aware.

        ``reduce="mean"`` / ``"sum"`` returns (B, H_kv, T), the mean / sum over the ``w``
        queries, without ever holding the (B, H_kv, w, T) probabilities (what every policy
        that pools over the window needs).

        Computed one KV head at a time (its query heads share the key, nothing is repeated)
        with only that head's keys in float32, and in chunks of queries, so the memory on top
        of the result is O(B x groups x w_chunk x T) with B x groups x w_chunk x T at most
        ``chunk_elements``."""
        if reduce not in (None, "mean", "sum"):
            raise ValueError(f"reduce must be None, 'mean' or 'sum', got {reduce!r}")
        t = self.keys.shape[2]
        w = max(1, min(w or self.window, t, self.hidden.shape[1]))
        if (w, reduce) in self._attn:
            return self._attn[(w, reduce)]
        if (w, None) in self._attn and reduce is not None:   # already built in full
            full = self._attn[(w, None)]
            out = full.mean(2) if reduce == "mean" else full.sum(2)
            self._attn[(w, reduce)] = out
            return out
        q = project_queries(self.module, self.hidden[:, -w:], self.cos[:, -w:], self.sin[:, -w:])
        b, _, _, _ = q.shape
        h, g = self.keys.shape[1], self.groups
        valid = self.valid if self.valid.dim() == 3 else self.valid[:, None, :]   # (B, 1|H, T)
        step = max(1, min(w, self.chunk_elements // max(1, b * g * t)))
        key_pos = torch.arange(t, device=q.device)
        shape = (b, h, w, t) if reduce is None else (b, h, t)
        out = (torch.empty if reduce is None else torch.zeros)(shape, dtype=torch.float32,
                                                                device=q.device)
        for j in range(h):
            k = self.keys[:, j].float().transpose(-1, -2)[:, None]          # (B, 1, D, T)
            ok = valid[:, j if valid.shape[1] > 1 else 0]                  # (B, T)
            for a in range(0, w, step):
                c = min(step, w - a)
                logits = torch.matmul(q[:, j * g:(j + 1) * g, a:a + c].float(), k)
                logits.mul_(self.module.scaling)                           # (B, g, c, T)
                q_pos = torch.arange(t - w + a, t - w + a + c, device=q.device)[:, None]
                allowed = (key_pos[None, :] <= q_pos)[None] & ok[:, None, :]   # (B, c, T)
                logits.masked_fill_(~allowed[:, None], float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                del logits
                probs = probs.nan_to_num_(nan=0.0).mean(1)                    # (B, c, T)
                if reduce is None:
                    out[:, j, a:a + c] = probs
                else:
                    out[:, j] += probs.sum(1)
        if reduce == "mean":
            out /= w
        self._attn[(w, reduce)] = out
        return out
