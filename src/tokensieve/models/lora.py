"""Low-rank adapters (LoRA) on a frozen causal LM's linear layers, trained, then merged.

The small VLM may adapt its language model a little (issue 19: "LoRA on it only if the
projector alone is not enough"). :func:`add_lora` wraps the named projections of every decoder
layer in :class:`LoRALinear` (``base(x) + scale * B(A(x))``, ``B`` starts at zero so the wrapped
model is unchanged until trained); :func:`lora_state` gives the adapters' weights to save, and
:func:`merge_lora` folds saved adapters into the plain ``nn.Linear`` weights
(``W += scale * B @ A``), so the loaded model is an ordinary Hugging Face model again: the
pruning wrappers, SDPA and the KV cache see nothing unusual.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

LORA_PREFIX = "lora."
DEFAULT_TARGETS = ("q_proj", "v_proj", "o_proj")
MAX_RANK = 256


class LoRALinear(torch.nn.Module):
    """``base(x) + scale * x A^T B^T`` with ``base`` frozen; ``A`` seeded, ``B`` zero."""

    def __init__(self, base, rank: int, alpha: float, generator=None):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = torch.nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank,
                                                     dtype=torch.float32))
        bound = base.in_features ** -0.5
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)

    def forward(self, x):
        low = (x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()
        return self.base(x) + (self.scale * low).to(x.dtype)


def _targets(lm_body, names: Iterable[str]):
    """(path, parent module, attribute) of each decoder-layer linear called one of ``names``."""
    names = set(names)
    for path, module in lm_body.named_modules():
        for child, sub in module.named_children():
            if child in names and hasattr(sub, "in_features"):
                yield (f"{path}.{child}" if path else child), module, child


def add_lora(lm_body, rank: int, *, alpha: float | None = None,
             targets: Iterable[str] = DEFAULT_TARGETS, seed: int = 0) -> list:
    """Wrap ``targets`` in every layer of ``lm_body`` (e.g. ``model.model.language_model``);
    returns the adapters' parameters (the only ones that will need gradients)."""
    if not 1 <= rank <= MAX_RANK:
        raise ValueError(f"LoRA rank must be 1..{MAX_RANK}, got {rank}")
    alpha = float(alpha if alpha is not None else 2 * rank)
    gen = torch.Generator().manual_seed(seed)
    params = []
    found = list(_targets(lm_body, targets))
    if not found:
        raise ValueError(f"no linear layer named {sorted(targets)} in the language model")
    for _path, parent, child in found:
        wrapped = LoRALinear(getattr(parent, child), rank, alpha, gen)
        setattr(parent, child, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_state(lm_body) -> dict:
    """The adapters' weights, keyed ``lora.<path>.A`` / ``.B``, plus ``lora.scale``."""
    out = {}
    scale = None
    for path, module in lm_body.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{LORA_PREFIX}{path}.A"] = module.lora_A.detach().cpu().contiguous()
            out[f"{LORA_PREFIX}{path}.B"] = module.lora_B.detach().cpu().contiguous()
            scale = module.scale
    if scale is not None:
        out[f"{LORA_PREFIX}scale"] = torch.tensor([scale], dtype=torch.float32)
    return out


def remove_lora(lm_body) -> None:
    """Fold every :class:`LoRALinear` of ``lm_body`` back into its base linear, in place."""
    for _path, module in list(lm_body.named_modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, LoRALinear):
                with torch.no_grad():
                    delta = sub.scale * (sub.lora_B @ sub.lora_A)
                    sub.base.weight += delta.to(sub.base.weight.dtype)
                setattr(module, child, sub.base)


def merge_lora(lm_body, state: dict) -> int:
    """Add saved adapters (``lora.<path>.A/.B`` and ``lora.scale`` in ``state``) into
    ``lm_body``'s linear weights; returns how many layers changed. Raises ``ValueError`` when
    a path or a shape does not fit."""
    if f"{LORA_PREFIX}scale" not in state:
        raise ValueError("the adapters have no lora.scale")
    scale = float(state[f"{LORA_PREFIX}scale"].reshape(-1)[0])
    modules = dict(lm_body.named_modules())
    paths = sorted({k[len(LORA_PREFIX):-2] for k in state
                    if k.startswith(LORA_PREFIX) and k.endswith((".A", ".B"))})
    for path in paths:
        layer = modules.get(path)
        a, b = state.get(f"{LORA_PREFIX}{path}.A"), state.get(f"{LORA_PREFIX}{path}.B")
        if layer is None or not hasattr(layer, "weight") or a is None or b is None:
            raise ValueError(f"adapter {path!r} has no matching linear layer (or lacks A/B)")
        if (b.shape[0], a.shape[1]) != tuple(layer.weight.shape) or a.shape[0] != b.shape[1]:
            raise ValueError(f"adapter {path!r} is {b.shape[0]}x{a.shape[1]}, the layer is "
                             f"{tuple(layer.weight.shape)}")
        with torch.no_grad():
            layer.weight += (scale * (b.float() @ a.float())).to(layer.weight.dtype)
    return len(paths)
