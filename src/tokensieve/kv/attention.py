"""What a policy may look at for one layer: its keys and values, and the attention of an
*observation window* of queries (the last few tokens) over all keys. The full T x T attention
matrix is never built; the model itself keeps running with sdpa or eager."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

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

    @property
    def groups(self) -> int:
        return self.module.config.num_attention_heads // self.keys.shape[1]

    def window_attention(self, w: int | None = None) -> torch.Tensor:
        """Attention probabilities (B, H_kv, w, T) of the last ``w`` queries over all keys,
        averaged over the query heads that share a KV head. Causal and padding aware."""
        t = self.keys.shape[2]
        w = max(1, min(w or self.window, t, self.hidden.shape[1]))
        if w in self._attn:
            return self._attn[w]
        q = project_queries(self.module, self.hidden[:, -w:], self.cos[:, -w:], self.sin[:, -w:])
        b, hq, _, d = q.shape
        k = self.keys.repeat_interleave(self.groups, dim=1) if self.groups > 1 else self.keys
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.module.scaling
        qpos = torch.arange(t - w, t, device=q.device)[:, None]
        allowed = (torch.arange(t, device=q.device)[None, :] <= qpos)[None, None]
        valid = self.valid if self.valid.dim() == 3 else self.valid[:, None, :]
        if valid.shape[1] > 1 and self.groups > 1:
            valid = valid.repeat_interleave(self.groups, dim=1)
        allowed = allowed & valid[:, :, None, :]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)
        probs = probs.view(b, hq // self.groups, self.groups, w, t).mean(2)
        self._attn[w] = probs
        return probs
