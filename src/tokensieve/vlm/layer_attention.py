"""What the inside stage reads at decoder layer ``k``: the attention that chosen query rows
pay to the visual tokens, recomputed from that layer's own q/k projections (RoPE applied,
GQA aware, head mean) for those rows only, so the model's attention kernel (SDPA) is left
alone and no (L, L) map per head is ever held."""

from __future__ import annotations

import sys

import torch

from ..errors import UsageError

ROW_CHUNK = 128  # query rows scored at once: bounds the (heads, rows, L) block in memory


def rope_function(attn):
    """``f(x, cos, sin) -> x`` with RoPE applied the way ``attn``'s own module does it
    (Llama-style ``apply_rotary_pos_emb``, Qwen2-VL's multimodal sections)."""
    module = sys.modules[type(attn).__module__]
    sections = (getattr(attn.config, "rope_parameters", None) or {}).get("mrope_section")
    multimodal = getattr(module, "apply_multimodal_rotary_pos_emb", None)
    if sections is not None and multimodal is not None:
        return lambda x, cos, sin: multimodal(x, x, cos, sin, sections)[0]
    plain = getattr(module, "apply_rotary_pos_emb", None)
    if plain is None:
        raise UsageError(f"the inside stage cannot read the attention of {type(attn).__name__} "
                         "(no rotary embedding function found); use stage='before'.")
    return lambda x, cos, sin: plain(x, x, cos, sin)[0]


def _row(t: torch.Tensor, b: int) -> torch.Tensor:
    """Row ``b`` of cos/sin (batch dim -3, size 1 when broadcast), keeping the dim."""
    return t.narrow(-3, b if t.shape[-3] > 1 else 0, 1)


def _heads(attn, proj, x: torch.Tensor, norm_name: str) -> torch.Tensor:
    """(1, heads, n, head_dim) projection of ``x`` (n, D), with the module's q/k norm if any."""
    h = proj(x).view(1, x.shape[0], -1, attn.head_dim)
    norm = getattr(attn, norm_name, None)
    if norm is not None:
        h = norm(h)
    return h.transpose(1, 2)


@torch.no_grad()
def attention_to(layer, hidden_in: torch.Tensor, position_embeddings, b: int,
                 valid: torch.Tensor, queries: torch.Tensor, columns: torch.Tensor,
                 ) -> torch.Tensor:
    """Head-mean attention (len(queries), len(columns)) of row ``b`` at decoder ``layer``:
    each query row's softmax over the keys it may see (causal, padding ``valid`` (L,)
    excluded), restricted to ``columns``. ``hidden_in`` (B, L, D) enters the layer."""
    attn = layer.self_attn
    rope = rope_function(attn)
    cos, sin = (_row(t, b) for t in position_embeddings)
    x = layer.input_layernorm(hidden_in[b])
    keys = rope(_heads(attn, attn.k_proj, x, "k_norm"), cos, sin)[0]     # (Hkv, L, hd)
    groups = getattr(attn, "num_key_value_groups", 1)
    keys = keys.repeat_interleave(groups, dim=0).float()                 # (H, L, hd)
    pos = torch.arange(x.shape[0], device=x.device)
    out = []
    for chunk in queries.split(ROW_CHUNK):
        q = _heads(attn, attn.q_proj, x[chunk], "q_norm")
        q = rope(q, cos[..., chunk, :], sin[..., chunk, :])[0].float()  # (H, c, hd)
        scores = q @ keys.transpose(1, 2) * attn.scaling                  # (H, c, L)
        seen = (pos[None, :] <= chunk[:, None]) & valid[None, :]
        probs = scores.masked_fill(~seen, float("-inf")).softmax(-1).nan_to_num(0.0)
        out.append(probs.mean(0)[:, columns])
    if not out:
        return torch.zeros(0, len(columns), device=x.device)
    return torch.cat(out)


def language_model(model):
    """The decoder stack of a VLM (Llava, Qwen2-VL: ``model.model.language_model``;
    Idefics3: ``model.model.text_model``) or of a plain causal LM (``model.model``)."""
    for path in ("model.language_model", "model.text_model", "language_model", "model", ""):
        mod = model
        for part in filter(None, path.split(".")):
            mod = getattr(mod, part, None)
        if isinstance(getattr(mod, "layers", None), torch.nn.ModuleList):
            return mod
    raise UsageError(f"{type(model).__name__} has no decoder layers the inside stage knows; "
                     "use stage='before'.")
