"""Patch hooks on a vision transformer: reduce its patch tokens inside the forward pass.

``Reducer(model, method, keep=...)`` installs (``apply``) and removes (``remove``) forward
hooks on the model's blocks and an attention tap on the attention modules it needs; nothing
is changed at class level and nothing stays behind after ``remove`` (also on errors). Used
as a context manager through :func:`tokensieve.vision.reduce`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.budget import check_keep, keep_count
from ..engine.merge import combine
from ..errors import UsageError
from .families import Family, detect, install_tap
from .methods import Step, VisionMethod, get_method
from .methods.base import compose

MARK = "_tokensieve_vision"


@dataclass
class VisionTrace:
    """What the last forward did, per image.

    ``source`` (B, P) for each of the P original patches (raster order) the index of the
    final patch token holding it, ``-1`` if it was dropped; ``sizes`` (B, n) how many
    original patches each final patch token holds; ``tokens`` the number of tokens (prefix
    included) entering each block; ``grid`` (rows, cols) of patches; ``prefix`` the number of
    CLS / register / distillation tokens, never reduced."""

    grid: tuple[int, int]
    prefix: int
    source: torch.Tensor
    sizes: torch.Tensor
    tokens: list[int] = field(default_factory=list)

    @property
    def kept(self) -> torch.Tensor:
        """(B, P) bool: original patches still represented (kept or merged) at the end."""
        return self.source >= 0

    def kept_fraction(self) -> float:
        """Patch tokens at the end over patches in the image."""
        return self.sizes.shape[1] / self.source.shape[1]

    def groups(self, image: int = 0) -> list[list[int]]:
        """For one image, the original patches (raster indices) each final token holds."""
        src = self.source[image].tolist()
        out: list[list[int]] = [[] for _ in range(self.sizes.shape[1])]
        for patch, slot in enumerate(src):
            if slot >= 0:
                out[slot].append(patch)
        return out

    def to_dict(self) -> dict:
        """Plain lists, one entry per image (JSON-ready)."""
        return {"grid": list(self.grid), "prefix": self.prefix, "tokens": list(self.tokens),
                "source": self.source.tolist(), "sizes": self.sizes.tolist()}


class _Forward:
    """State of one forward pass."""

    def __init__(self, grid: tuple[int, int]):
        self.grid = grid
        self.prefix = -1
        self.n0 = grid[0] * grid[1]
        self.sizes: torch.Tensor | None = None     # (B, N) all tokens, prefix included
        self.source: torch.Tensor | None = None    # (B, P) original patch -> current patch slot
        self.in_grid = True                         # tokens are still the raster patch grid
        self.obs: dict[str, torch.Tensor] = {}
        self.x_in: torch.Tensor | None = None
        self.tokens: list[int] = []
        self.bias: torch.Tensor | None = None      # (B, 1, 1, N) log sizes, after a merge


def _first_tensor(args, kwargs, name: str) -> torch.Tensor:
    x = args[0] if args else kwargs.get(name)
    if not torch.is_tensor(x):
        raise UsageError(f"vision.reduce could not find the {name} tensor in the call.")
    return x


class Reducer:
    """Reduce patch tokens of ``model`` with ``method``.

    Budget: ``keep`` (fraction of patch tokens left after the last reduction, in (0, 1]) or
    ``count`` (patch tokens left). ``at``: the block (0-based) after which tokens are reduced,
    or several blocks (progressive: the kept fraction shrinks geometrically over them).
    ``proportional``: weigh merged tokens by their size in later attention (default: as the
    method says)."""

    def __init__(self, model: nn.Module, method: str | VisionMethod = "default", *,
                 keep: float | None = None, count: int | None = None,
                 at: int | Sequence[int] | None = None, proportional: bool | None = None,
                 seed: int = 0):
        if (keep is None) == (count is None):
            if keep is None:
                raise UsageError("give a budget: keep=<fraction kept, e.g. 0.5> "
                                 "or count=<patch tokens>.")
            raise UsageError("give either keep= or count=, not both.")
        if keep is not None:
            keep = check_keep(keep)
        bad_count = isinstance(count, bool) or not isinstance(count, int) or count < 1
        if count is not None and bad_count:
            raise UsageError("count is the number of patch tokens to keep (an int >= 1), "
                             f"got {count!r}.")
        self.model = model
        self.family: Family = detect(model)
        self.method = get_method(method)
        self.keep, self.count = keep, count
        n_layers = len(self.family.layers)
        stages = default_stages(n_layers) if at is None else (
            [at] if isinstance(at, int) and not isinstance(at, bool) else list(at))
        if not stages or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < n_layers
                             for s in stages) or len(set(stages)) != len(stages):
            raise UsageError("at= names the blocks to reduce after: distinct ints in "
                             f"0..{n_layers - 1}, got {at!r}.")
        self.stages = sorted(stages)
        self.proportional = self.method.proportional if proportional is None else bool(proportional)
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.last: VisionTrace | None = None
        self._state: _Forward | None = None
        self._undo: list = []

    # ------------------------------------------------------------------ install / remove
    def apply(self) -> Reducer:
        if MARK in self.model.__dict__:
            raise UsageError("this model is already patched by tokensieve.vision; leave the other "
                             "reduce() block (or call .remove()) first.")
        self.generator = torch.Generator().manual_seed(self.seed)
        try:
            self.model.__dict__[MARK] = self
            self._undo.append(lambda: self.model.__dict__.pop(MARK, None))
            fam = self.family
            self._hook(fam.embed.register_forward_pre_hook(self._on_image, with_kwargs=True))
            self._hook(fam.layers[0].register_forward_pre_hook(self._on_first_block,
                                                               with_kwargs=True))
            first = self.stages[0]
            for i, layer in enumerate(fam.layers):
                if i in self.stages:
                    if "x_in" in self.method.needs:
                        self._hook(layer.register_forward_pre_hook(self._on_block_input,
                                                                   with_kwargs=True))
                    self._hook(layer.register_forward_hook(self._reducer_for(i)))
                observe = i in self.stages and bool(self.method.needs & {"keys", "cls_attn"})
                if observe or (self.proportional and i > first):
                    self._undo.append(install_tap(fam, fam.attention[i], self._tap_for(i, observe)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._state = None

    def __enter__(self) -> Reducer:
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _hook(self, handle) -> None:
        self._undo.append(handle.remove)

    # ------------------------------------------------------------------ hooks
    def _on_image(self, module, args, kwargs):
        pixels = _first_tensor(args, kwargs, "pixel_values")
        p = self.family.patch_size
        feat_size = getattr(module, "dynamic_feat_size", None)  # timm: pads up if asked to
        grid = (tuple(int(s) for s in feat_size(tuple(pixels.shape[-2:])))
                if callable(feat_size) else (pixels.shape[-2] // p, pixels.shape[-1] // p))
        self._state = _Forward(grid)

    def _on_first_block(self, module, args, kwargs):
        st = self._state
        if st is None:
            raise UsageError("vision.reduce saw the blocks run without the image embedding; "
                             "call the model on pixel values.")
        x = _first_tensor(args, kwargs, "hidden_states")
        b, n = x.shape[:2]
        st.prefix = n - st.n0
        if st.prefix < 0:
            raise UsageError(f"the model has {n} tokens for a {st.grid[0]}x{st.grid[1]} patch "
                             "grid; this layout is not supported.")
        if self.count is not None and self.count > st.n0:
            raise UsageError(f"count={self.count} is more than the {st.n0} patch tokens of this "
                             "image; lower count or use keep=<fraction>.")
        st.sizes = torch.ones(b, n, device=x.device, dtype=torch.float32)
        st.source = torch.arange(st.n0, device=x.device).expand(b, -1).contiguous()
        st.tokens = []
        self._publish()

    def _on_block_input(self, module, args, kwargs):
        self._state.x_in = _first_tensor(args, kwargs, "hidden_states")

    def _targets(self, n0: int) -> list[int]:
        final = self.count if self.count is not None else keep_count(self.keep, n0)
        s = len(self.stages)
        return [max(final, keep_count((final / n0) ** ((i + 1) / s), n0)) for i in range(s)]

    def _tap_for(self, layer: int, observe: bool):
        def tap(module, q, k, v, mask, scaling):
            st = self._state
            if st is None:
                return mask
            if self.proportional and st.bias is not None:
                bias = st.bias.to(q.dtype)
                mask = bias if mask is None else mask + bias
            if observe:
                p = st.prefix
                need = self.method.needs
                if "keys" in need:
                    st.obs["keys"] = k[:, :, p:].mean(1)
                if "cls_attn" in need and p > 0:
                    logits = (q[:, :, :1] @ k.transpose(-2, -1)).float() * scaling
                    if mask is not None:
                        logits = logits + mask.float()[..., :1, :] if mask.shape[-2] > 1 \
                            else logits + mask.float()
                    st.obs["cls_attn"] = logits.softmax(-1)[:, :, 0, p:].mean(1)
            return mask
        return tap

    def _reducer_for(self, layer: int):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            y = self._reduce(layer, x)
            if y is x:
                return None
            return (y, *output[1:]) if isinstance(output, tuple) else y
        return hook

    def _reduce(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        st = self._state
        p, n = st.prefix, x.shape[1] - st.prefix
        target = self._targets(st.n0)[self.stages.index(layer)]
        obs, st.obs = st.obs, {}
        x_in, st.x_in = st.x_in, None
        if target >= n:
            return x
        patches = x[:, p:]
        step = Step(x=patches, sizes=st.sizes[:, p:], n_keep=target, layer=layer,
                    num_layers=len(self.family.layers), keys=obs.get("keys"),
                    cls_attn=obs.get("cls_attn"),
                    x_in=None if x_in is None else x_in[:, p:],
                    grid=st.grid if st.in_grid else None, generator=self.generator)
        plan = self.method.assign(step)
        slot, n_out = _in_order(plan.slot, plan.n_out)
        weight = st.sizes[:, p:] if plan.weight is None else st.sizes[:, p:] * plan.weight
        merged, _ = combine(patches, slot, n_out, weight.to(x.dtype))
        _, sizes = combine(st.sizes[:, p:, None], slot, n_out, st.sizes[:, p:])
        st.sizes = torch.cat([st.sizes[:, :p], sizes], 1)
        st.source = compose(st.source, slot)
        st.in_grid = False
        if self.proportional and bool((sizes != 1).any()):
            st.bias = st.sizes.log()[:, None, None, :]
        else:
            st.bias = None
        self._publish()
        return torch.cat([x[:, :p], merged], 1)

    def _publish(self) -> None:
        st = self._state
        st.tokens.append(st.sizes.shape[1])
        self.last = VisionTrace(st.grid, st.prefix, st.source, st.sizes[:, st.prefix:], st.tokens)


def _in_order(slot: torch.Tensor, n_out: int) -> tuple[torch.Tensor, int]:
    """Renumber slots so that output tokens follow the position of their first member, and
    drop slots no token uses."""
    b, n = slot.shape
    pos = torch.arange(n, device=slot.device).expand(b, -1)
    first = torch.full((b, n_out + 1), n, device=slot.device, dtype=torch.long)
    first.scatter_reduce_(1, torch.where(slot >= 0, slot, n_out), pos, reduce="amin")
    first = first[:, :n_out]
    used = first < n
    n_used = int(used.sum(-1).max())
    if not bool((used.sum(-1) == n_used).all()):
        raise RuntimeError("a vision method gave images of one batch different token counts")
    order = first.argsort(dim=-1, stable=True)                  # used slots first, by position
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_out, device=slot.device)
                                            .expand(b, -1).contiguous())
    new = torch.where(slot >= 0, torch.gather(rank, 1, slot.clamp_min(0)), slot)
    return new, n_used


def default_stages(n_layers: int) -> list[int]:
    """Blocks after which tokens are reduced by default: a progressive schedule over the
    first half of the encoder (blocks 1 .. n/2 - 1), chosen on the dev split (merging a
    little at each of several blocks keeps far more accuracy than one large cut at the same
    compute)."""
    return list(range(1, max(2, n_layers // 2))) if n_layers > 1 else [0]
