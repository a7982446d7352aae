"""A learned guess of where the language model will look (the TokenButler idea, for images).

The small VLM finds the part of an image a question names only deep in its decoder (layers
21-23 of 30, ``tokensieve bench vlm-layers``); the ``probe`` method asks those layers, which
costs a partial prefill per image. :class:`LookHead` predicts the same signal — the attention
the prompt's last token pays to each visual token at a deep layer — from what is known
before the language model runs: the projected visual tokens, their place in the patch grid,
and the question's input embeddings. It is a few hundred thousand parameters, trained here
by distillation from the model's own attention (``tokensieve vlm train-look``), so it runs in
a millisecond per image.

The head for the project's small VLM ships in ``tokensieve/models/data``
(``small_vlm_look_head.*``); another model needs its own (``--out`` folder, then
``learned:head=FOLDER``).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelNotFoundError, UsageError

DATA_DIR = Path(__file__).resolve().parents[1] / "models" / "data"
HEAD_NAME = "small_vlm_look_head"

_lock = threading.Lock()
_cache: dict[str, tuple[LookHead, dict]] = {}


def fingerprint(model) -> str:
    """A short id of a VLM's architecture, which a look head is tied to: its class, the
    language model's width, depth and vocabulary, the vision tower's type and width, and the
    visual tokens per image. (A head stays tied to the projector it was trained with; the id
    cannot see the weights: retrain the head after retraining the projector.)"""
    cfg = model.config
    text = cfg.get_text_config()
    vision = getattr(cfg, "vision_config", None)
    parts = (type(model).__name__, getattr(text, "hidden_size", None),
             getattr(text, "num_hidden_layers", None), getattr(text, "vocab_size", None),
             getattr(vision, "model_type", None), getattr(vision, "hidden_size", None),
             getattr(cfg, "image_seq_length", None))
    return ":".join(map(str, parts))


def coordinates(n: int, grid: tuple[int, int] | None) -> torch.Tensor:
    """(n, 2) positions in [0, 1]: (row, column) on a patch grid in raster order; without a
    grid, the token's place in the sequence and 0."""
    if grid is not None and grid[0] * grid[1] == n:
        h, w = grid
        r = torch.arange(h, dtype=torch.float32) / max(h - 1, 1)
        c = torch.arange(w, dtype=torch.float32) / max(w - 1, 1)
        return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(n, 2)
    t = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    return torch.stack([t, torch.zeros(n)], -1)


def fourier(coords: torch.Tensor, freqs: int) -> torch.Tensor:
    """(..., 4 * freqs) sines and cosines of each coordinate at 1..freqs half-turns."""
    k = torch.arange(1, freqs + 1, dtype=coords.dtype, device=coords.device) * math.pi
    x = coords[..., :, None] * k                              # (..., 2, freqs)
    return torch.cat([x.sin(), x.cos()], -1).flatten(-2)


def neighbourhood(features: torch.Tensor, coords: torch.Tensor, size: int) -> torch.Tensor:
    """(..., N, D): each token's mean over the ``size`` x ``size`` window of the patch grid
    around it (the grid read from ``coords``; without a grid, a window of ``size`` along the
    sequence), so a token knows what its surroundings show."""
    n, d = features.shape[-2:]
    flat = coords.reshape(-1, n, 2)
    rows = int(torch.unique(flat[0, :, 0]).numel())
    if flat.shape[0] > 1 and not torch.equal(flat, flat[:1].expand_as(flat)):
        raise UsageError("the look head's context needs one patch grid for every image of a "
                         "batch; resize the images to one size.")
    h, w = (rows, n // rows) if rows * (n // rows) == n else (n, 1)
    lead = features.shape[:-2]
    x = features.reshape(-1, h, w, d).permute(0, 3, 1, 2)
    kh, kw = (size, size) if w > 1 else (size, 1)
    x = F.avg_pool2d(x, (kh, kw), stride=1, padding=(kh // 2, kw // 2),
                     count_include_pad=False)[..., :h, :w]
    return x.permute(0, 2, 3, 1).reshape(*lead, n, d)


def check_context(context: int) -> None:
    """A look head's ``context``: 0 (none) or an odd window of at least 3."""
    if context < 0 or context == 1 or (context and context % 2 == 0):
        raise UsageError(f"the look head's context must be 0 (none) or an odd window of at "
                         f"least 3, not {context}.")


def pool_text(text: torch.Tensor) -> torch.Tensor:
    """(2 * D,): the mean and the max over the question's tokens of their normalised input
    embeddings (what the head reads of the question)."""
    t = F.layer_norm(text.float(), text.shape[-1:])
    return torch.cat([t.mean(0), t.amax(0)])


class LookHead(torch.nn.Module):
    """(visual tokens (N, D), their coordinates (N, 2), pooled question (2D,)) -> (N,)
    logits of the deep layer's attention: ``heads`` bilinear matches between a visual key
    (an MLP of the token and its place) and a question query, log-sum-exp over heads, plus
    a question-free prior per token. With ``context`` > 1 the key also reads the mean of the
    token's ``context`` x ``context`` neighbourhood (0: the token alone)."""

    def __init__(self, dim: int, hidden: int = 128, heads: int = 4, freqs: int = 4,
                 context: int = 0) -> None:
        super().__init__()
        if hidden % heads:
            raise UsageError(f"LookHead: hidden ({hidden}) must be a multiple of heads ({heads}).")
        check_context(context)
        self.dim, self.hidden, self.heads, self.freqs = dim, hidden, heads, freqs
        self.context = context
        width = dim * (2 if context else 1) + 4 * freqs
        self.visual = torch.nn.Sequential(torch.nn.Linear(width, hidden),
                                          torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
        self.question = torch.nn.Sequential(torch.nn.Linear(2 * dim, hidden), torch.nn.GELU(),
                                            torch.nn.Linear(hidden, hidden))
        self.prior = torch.nn.Linear(hidden, 1)

    def config(self) -> dict:
        return {"dim": self.dim, "hidden": self.hidden, "heads": self.heads,
                "freqs": self.freqs, "context": self.context}

    def forward(self, features: torch.Tensor, coords: torch.Tensor,
                question: torch.Tensor) -> torch.Tensor:
        """``features`` (..., N, D), ``coords`` (..., N, 2), ``question`` (..., 2D) ->
        (..., N) logits."""
        v = F.layer_norm(features.float(), features.shape[-1:])
        parts = [v, fourier(coords.float(), self.freqs)]
        if self.context:
            parts.insert(1, neighbourhood(v, coords, self.context))
        k = self.visual(torch.cat(parts, -1))
        q = self.question(question.float())
        e = self.hidden // self.heads
        qh = q.unflatten(-1, (self.heads, e))[..., None, :, :]          # (..., 1, H, e)
        match = k.unflatten(-1, (self.heads, e)) * qh
        return torch.logsumexp(match.sum(-1) / math.sqrt(e), -1) + self.prior(k).squeeze(-1)

    @torch.inference_mode()
    def scores(self, features: torch.Tensor, text: torch.Tensor,
               grid: tuple[int, int] | None) -> torch.Tensor:
        """(N,) logits for one image's tokens and its question's embeddings (T, D)."""
        if features.shape[-1] != self.dim:
            raise UsageError(f"the look head was trained for {self.dim}-wide visual tokens, "
                             f"these are {features.shape[-1]}-wide: train one for this model "
                             "with `tokensieve vlm train-look --model FOLDER --out DIR` and "
                             "pass learned:head=DIR.")
        n = features.shape[0]
        return self(features, coordinates(n, grid), pool_text(text))


def save_head(folder: str | Path, head: LookHead, record: dict) -> Path:
    """Write ``HEAD_NAME.safetensors`` (weights) and ``HEAD_NAME.json`` (config + record)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(folder / f"{HEAD_NAME}.safetensors"))
    (folder / f"{HEAD_NAME}.json").write_text(
        json.dumps({**head.config(), **record}, indent=1) + "\n")
    return folder


def load_head(folder: str | Path | None = None) -> tuple[LookHead, dict]:
    """(head, its record) from ``folder`` (default: the one shipped for the small VLM);
    cached per folder."""
    folder = Path(folder).expanduser() if folder else DATA_DIR
    key = str(folder.resolve())
    with _lock:
        if key not in _cache:
            weights = folder / f"{HEAD_NAME}.safetensors"
            meta = folder / f"{HEAD_NAME}.json"
            if not weights.is_file() or not meta.is_file():
                raise ModelNotFoundError(
                    f"no look head in {folder} ({HEAD_NAME}.safetensors and .json); train "
                    "one with: tokensieve vlm train-look --out FOLDER")
            from safetensors.torch import load_file

            record = json.loads(meta.read_text())
            head = LookHead(int(record["dim"]), int(record["hidden"]), int(record["heads"]),
                            int(record["freqs"]), int(record.get("context", 0)))
            head.load_state_dict(load_file(str(weights)))
            _cache[key] = (head.eval(), record)
        return _cache[key]
