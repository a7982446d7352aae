"""Sticky tokens of a sentence encoder, after "Sticking to the Mean" (2025): tokens that,
inserted repeatedly into unrelated sentences, pull their embeddings toward each other, so a
few copies of the token make any two texts look alike to a retriever.

The effect of a token is measured directly: it is inserted ``repeats`` times at fixed
(seeded) places into every sentence of a set of unrelated sentences, and the mean over all
sentence pairs of the change in cosine similarity (mean-pooled, unit-length embeddings) is
its score. Measuring that for a whole vocabulary costs one forward per sentence and token,
so three stages keep it bounded:

1. an embedding-level indicator over every reachable token (the cosine of its input
   embedding to the mean input embedding, minus its norm, both as z-scores: under-trained
   tokens sit near the mean with a small norm);
2. a first pass on one sentence pair, for the top ``screen`` tokens by the indicator plus a
   random ``sample`` (the first pass alone ranks like the full measure: Spearman ~0.9);
3. the full measure on every pair for the top ``validate`` tokens of the first pass, and
   for ``control`` random ones (what an ordinary token does).

Only tokens some text can produce are screened (see :func:`.tokens.token_categories`):
unreachable pieces such as BERT's ``[unused0]`` or ``##`` + a CJK character cannot be
inserted through text.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .tokens import CATEGORIES, show_piece, token_categories

# Unrelated topics, so that their pairwise similarity starts low.
SENTENCES = (
    "The cat slept on the warm windowsill all afternoon.",
    "Interest rates rose sharply after the central bank meeting.",
    "She planted tomatoes and basil in the garden last spring.",
    "The compiler reported a type error on line forty-two.",
    "Volcanic ash grounded flights across northern Europe.",
    "He practised the violin every evening before dinner.",
    "The museum opened a new exhibition of ancient pottery.",
    "Our team won the football match in extra time.",
    "Glaciers in the Alps are melting faster than expected.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "A new vaccine was approved for use in children.",
    "The train to Berlin was delayed by a signal failure.",
)


@dataclass
class StickyToken:
    """One measured token: ``increase`` = mean change of pairwise cosine similarity when it
    is inserted (None if only screened); ``first_pass`` = the change on the screening pair;
    ``indicator`` = the embedding-level screen; ``raised`` = fraction of pairs it raised."""

    id: int
    piece: str
    text: str
    indicator: float
    first_pass: float
    increase: float | None = None
    raised: float | None = None
    control: bool = False


@dataclass
class StickyResult:
    """What :func:`sticky` returns. ``tokens``: the validated tokens, largest increase first
    (``control`` ones are random tokens measured the same way); ``base_similarity``: mean
    pairwise cosine of the sentences as they are."""

    encoder: str
    vocab_size: int
    repeats: int
    sentences: list[str]
    n_pairs: int
    base_similarity: float
    screened: int
    tokens: list[StickyToken]
    control: dict[str, Any] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def worst(self) -> list[StickyToken]:
        """Validated screened tokens (not the controls), largest increase first."""
        return [t for t in self.tokens if not t.control]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, limit: int = 20) -> str:
        lines = [f"{'id':>7}  {'token':<24} {'increase':>9} {'raised':>7} {'first pass':>10}"]
        for t in self.worst[:limit]:
            lines.append(f"{t.id:>7}  {show_piece(t.piece, 24):<24} {t.increase:>9.3f} "
                         f"{t.raised:>7.0%} {t.first_pass:>10.3f}")
        c = self.control
        lines.append(f"mean pairwise cosine {self.base_similarity:.3f} over {self.n_pairs} pairs "
                     f"of unrelated sentences; each token inserted {self.repeats} times")
        if c:
            lines.append(f"an ordinary token (median of {c['n']} random ones) raises it by "
                         f"{c['median_increase']:.3f} (90th percentile {c['p90_increase']:.3f})")
        return "\n".join(lines)


def _resolve_encoder(encoder: Any, device: str, dtype: str) -> tuple[Any, Any, str]:
    from ..models import LoadedModel, load_encoder

    if isinstance(encoder, str):
        loaded = load_encoder(encoder, device=device, dtype=dtype)
        return loaded.model, loaded.tokenizer, encoder
    if isinstance(encoder, LoadedModel):
        return encoder.model, encoder.tokenizer, encoder.name
    if isinstance(encoder, tuple | list) and len(encoder) == 2:
        return encoder[0], encoder[1], type(encoder[0]).__name__
    raise UsageError(f"encoder must be a name ('default' = all-MiniLM-L6-v2, a local folder), a "
                     f"LoadedModel or a (model, tokenizer) pair, got {type(encoder).__name__}.")


class _Inserter:
    """Sentences as ids with ``repeats`` slots at fixed seeded places: every sentence of the
    set has one length whatever token fills the slots, so a batch needs no padding."""

    def __init__(self, tokenizer: Any, sentences: list[str], repeats: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.tokenizer = tokenizer
        self.ids, self.slots = [], []
        for s in sentences:
            ids = tokenizer(s, add_special_tokens=False)["input_ids"]
            self.ids.append(ids)
            self.slots.append(np.sort(rng.integers(0, len(ids) + 1, repeats)))

    def wrap(self, ids: list[int]) -> list[int]:
        build = getattr(self.tokenizer, "build_inputs_with_special_tokens", None)
        return list(build(ids)) if build is not None else list(ids)

    def plain(self, k: int) -> list[int]:
        return self.wrap(self.ids[k])

    def filled(self, k: int, token: int) -> list[int]:
        ids, out, j = self.ids[k], [], 0
        slots = self.slots[k]
        for i in range(len(ids) + 1):
            while j < len(slots) and slots[j] == i:
                out.append(token)
                j += 1
            if i < len(ids):
                out.append(ids[i])
        return self.wrap(out)


def _embed(model: Any, rows: list[list[int]], batch_size: int = 128) -> np.ndarray:
    """Unit-length mean-pooled embeddings of equal-length id rows."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for a in range(0, len(rows), batch_size):
            x = torch.tensor(rows[a : a + batch_size], device=device)
            hidden = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            pooled = hidden.float().mean(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1))


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def sticky(encoder: Any = "default", *, sentences: list[str] | None = None, repeats: int = 4,
           screen: int = 2000, sample: int = 500, validate: int = 100, control: int = 50,
           seed: int = 0, batch_size: int = 128, device: str = "cpu",
           dtype: str = "float32") -> StickyResult:
    """Find the tokens that make unrelated sentences look alike to ``encoder``.

    ``sentences``: unrelated sentences (default: 12 built-in ones; the first two are the
    screening pair); ``repeats``: copies inserted per sentence. ``screen``: tokens given the
    first pass, by the embedding-level indicator (0 = every reachable token: about 5 minutes
    for MiniLM on one CPU core), plus ``sample`` random ones; ``validate``: the top tokens
    of the first pass measured on every pair; ``control``: random tokens measured on every
    pair for comparison."""
    for name, value in (("repeats", repeats), ("screen", screen), ("sample", sample),
                        ("validate", validate), ("control", control)):
        if not isinstance(value, int) or value < 0:
            raise UsageError(f"{name} must be a whole number >= 0, got {value!r}.")
    if repeats < 1 or validate < 1:
        raise UsageError("repeats and validate must be at least 1.")
    sentences = list(SENTENCES if sentences is None else sentences)
    if len(sentences) < 2 or any(not isinstance(s, str) or not s.strip() for s in sentences):
        raise InputError("sticky needs at least two non-empty sentences.")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tok, name = _resolve_encoder(encoder, device, dtype)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None:
        raise InputError(f"sticky needs a transformer encoder with input embeddings, got "
                         f"{type(model).__name__}.")
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_rows = int(emb.weight.shape[0])
    cats, pieces, texts = token_categories(tok, n_rows)
    normal = np.flatnonzero(cats == 0)
    if len(normal) == 0:
        raise InputError("the encoder's tokenizer has no ordinary (reachable) tokens to test.")
    w = emb.weight.detach().float()
    mean = w[normal].mean(0)
    cos = np.asarray((w @ mean / (w.norm(dim=1) * mean.norm()).clamp_min(1e-12)).cpu())
    norms = np.asarray(w.norm(dim=1).cpu())
    indicator = np.full(n_rows, -np.inf)
    indicator[normal] = _zscore(cos[normal]) - _zscore(norms[normal])
    timings["indicator"] = time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    ins = _Inserter(tok, sentences, repeats, seed)
    t0 = time.perf_counter()
    by_indicator = normal[np.argsort(-indicator[normal], kind="stable")]
    top = by_indicator if screen == 0 else by_indicator[:screen]
    randoms = rng.permutation(normal)
    first_ids = list(dict.fromkeys([int(i) for i in top] + [int(i) for i in randoms[:sample]]))
    base = np.concatenate([_embed(model, [ins.plain(k)]) for k in range(len(sentences))])
    base_sims = base @ base.T
    a = _embed(model, [ins.filled(0, t) for t in first_ids], batch_size)
    b = _embed(model, [ins.filled(1, t) for t in first_ids], batch_size)
    first = np.full(n_rows, np.nan)
    first[first_ids] = (a * b).sum(1) - base_sims[0, 1]
    timings["first_pass"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ranked = sorted(first_ids, key=lambda i: -first[i])
    worst = ranked[:validate]
    controls = [int(i) for i in randoms[:control] if int(i) not in set(worst)]
    measured = worst + controls
    s = len(sentences)
    iu = np.triu_indices(s, 1)
    embs = np.stack([_embed(model, [ins.filled(k, t) for t in measured], batch_size)
                     for k in range(s)], axis=1)  # (tokens, sentences, dim)
    sims = np.einsum("tsd,tud->tsu", embs, embs)[:, iu[0], iu[1]]
    change = sims - base_sims[iu][None]
    increase, raised = change.mean(1), (change > 0).mean(1)
    timings["validate"] = time.perf_counter() - t0

    tokens = [StickyToken(i, pieces[i], texts[i], round(float(indicator[i]), 4),
                          round(float(first[i]), 4), round(float(increase[k]), 4),
                          round(float(raised[k]), 4), control=k >= len(worst))
              for k, i in enumerate(measured)]
    tokens.sort(key=lambda t: -t.increase)
    ctrl = increase[len(worst):]
    control_stats = ({"n": len(ctrl), "median_increase": round(float(np.median(ctrl)), 4),
                      "p90_increase": round(float(np.quantile(ctrl, 0.9)), 4)}
                     if len(ctrl) else {})
    counts = {c: int((cats == k).sum()) for k, c in enumerate(CATEGORIES)}
    notes = [f"{counts['unreachable']} unreachable and {counts['special']} special tokens are "
             "not screened (no text produces them)"]
    return StickyResult(name, n_rows, repeats, sentences, len(iu[0]),
                        round(float(base_sims[iu].mean()), 4), len(first_ids), tokens,
                        control_stats, counts, {k: round(v, 3) for k, v in timings.items()},
                        notes)
