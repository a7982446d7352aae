"""Under-trained ("glitch") tokens of a causal LM's vocabulary, after "Fishing for Magikarp"
(Land & Bartolo, 2024).

1. The tokenizer alone sorts every id into ``special`` (control / added special tokens),
   ``partial`` (a byte fragment that decodes to no whole character), ``unreachable`` (no
   text encodes to it: decode, then encode, does not give it back, even after a prefix
   token) and ``normal``.
2. Indicator, over all rows at once: the cosine between each unembedding row and the mean
   unembedding of known-unused tokens (special and unreachable ones; members that look
   trained are trimmed), after removing the unembedding matrix's first principal component.
   Higher = more like a token the model never saw. Without any known-unused token the input
   embedding norm ranks instead (lowest first).
3. Verification, on the top ``candidates`` normal tokens only: the model is asked to repeat
   the token in a few prompt templates (built at the id level, so the token is really there)
   and the probability it gives the token where the copy must start is read; a token whose
   best probability over the templates stays below ``threshold`` is under-trained.

``sticky`` (sentence encoders, after "Sticking to the Mean") lives in :mod:`.sticky` and is
reached from the CLI as ``tokensieve inspect vocab --sticky``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..scoring.lm import resolve_causal_lm
from .tokens import CATEGORIES, show_piece, special_head, token_categories

# Repeat prompts: the candidate goes between the pieces, its copy is predicted after the last.
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ('Please repeat the following string exactly.\nString: "', '"\nRepeated: "'),
    ("Copy the text between the brackets.\nText: [", "]\nCopy: ["),
    ("Echo each item.\n«", "» «", "» «"),
)
_TRIM_COSINE = 0.5  # reference members less similar than this to the first mean look trained


@dataclass
class VocabToken:
    """One vocabulary entry: ``piece`` as stored in the vocabulary, ``text`` decoded;
    ``indicator`` (higher = more under-trained looking) and ``rank`` by it among the normal
    tokens; ``norm`` of its input embedding; for verified tokens ``probs`` (one per template)
    and ``max_prob``, and ``under_trained`` = max_prob < threshold."""

    id: int
    piece: str
    text: str
    category: str
    indicator: float
    norm: float
    rank: int = -1
    probs: list[float] = field(default_factory=list)
    max_prob: float | None = None
    under_trained: bool | None = None


@dataclass
class VocabResult:
    """What :func:`vocab` returns. ``candidates``: the verified normal tokens in indicator
    order; ``unreachable``: tokens no text encodes to, by indicator; ``control``: the same
    verification on random normal tokens (how often an ordinary token fails it)."""

    model: str
    vocab_size: int
    n_rows: int
    indicator: str
    threshold: float
    reference: list[int]
    candidates: list[VocabToken]
    unreachable: list[VocabToken]
    categories: dict[str, int]
    templates: list[list[str]]
    control: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def under_trained(self) -> list[VocabToken]:
        """The verified under-trained tokens, most under-trained looking first."""
        return [t for t in self.candidates if t.under_trained]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["under_trained"] = [t.id for t in self.under_trained]
        return data

    def table(self, limit: int = 30) -> str:
        """A plain-text table of the verified under-trained tokens (then a summary)."""
        rows = self.under_trained[:limit]
        lines = [f"{'rank':>5} {'id':>7}  {'token':<28} {'indicator':>9} {'max p':>9}"]
        for t in rows:
            lines.append(f"{t.rank:>5} {t.id:>7}  {show_piece(t.piece):<28} {t.indicator:>9.3f} "
                         f"{t.max_prob:>9.2e}")
        n_bad = len(self.under_trained)
        lines.append(f"{n_bad} of {len(self.candidates)} candidates verified under-trained "
                     f"(max p < {self.threshold:g}); {len(self.unreachable)} unreachable "
                     f"tokens; indicator: {self.indicator}")
        if self.control:
            lines.append(f"control: {self.control['failed']} of {self.control['n']} random "
                         "normal tokens fail the same check")
        return "\n".join(lines)


def _sig(x: float) -> float:
    """A probability kept to 4 significant digits (small ones stay visible)."""
    return float(f"{float(x):.4g}")


def _device(model: Any):
    return next(model.parameters()).device


# --------------------------------------------------------------------------- indicators

def _chunks(n: int, size: int = 32768):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def unused_cosine(weight: Any, reference: list[int]) -> tuple[np.ndarray, list[int]]:
    """Cosine of every row of ``weight`` (V, d) to the mean of the ``reference`` rows, after
    removing the matrix's first principal component; reference members whose cosine to the
    first mean is below 0.5 (they look trained) are dropped and the mean is taken again.
    Computed in chunks without copying the matrix. Returns (cosines, reference kept)."""
    import torch

    w = weight.detach()
    n, d = w.shape
    mean = torch.zeros(d, dtype=torch.float64, device=w.device)
    for a, b in _chunks(n):
        mean += w[a:b].double().sum(0)
    mean /= n
    cov = torch.zeros(d, d, dtype=torch.float64, device=w.device)
    for a, b in _chunks(n):
        x = w[a:b].double() - mean
        cov += x.T @ x
    pc = torch.linalg.eigh(cov)[1][:, -1]  # eigenvalues ascending: the last is the largest

    def cosines(ref: list[int]) -> np.ndarray:
        r = w[ref].double().mean(0)
        r = r - (r @ pc) * pc
        out = np.empty(n)
        for a, b in _chunks(n):
            x = w[a:b].double()
            along = x @ pc
            dot = x @ r  # r is orthogonal to pc, so (x - along*pc) . r = x . r
            norm = (x.pow(2).sum(1) - along.pow(2)).clamp_min(1e-24).sqrt()
            out[a:b] = (dot / (norm * r.norm().clamp_min(1e-24))).cpu().numpy()
        return out

    first = cosines(reference)
    kept = [i for i in reference if first[i] >= _TRIM_COSINE]
    if len(kept) < 2 or len(kept) == len(reference):
        return first, list(reference)
    return cosines(kept), kept


def embedding_norms(weight: Any) -> np.ndarray:
    """L2 norm of every row of an embedding matrix, in chunks."""
    w = weight.detach()
    out = np.empty(w.shape[0])
    for a, b in _chunks(w.shape[0]):
        out[a:b] = w[a:b].double().norm(dim=1).cpu().numpy()
    return out


# --------------------------------------------------------------------------- verification

def _template_ids(tokenizer: Any, template: tuple[str, ...]) -> list[list[int]]:
    return [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in template]


def repeat_probabilities(model: Any, tokenizer: Any, ids: list[int], *,
                         templates: tuple[tuple[str, ...], ...] = TEMPLATES,
                         batch_size: int = 64) -> np.ndarray:
    """(len(ids), len(templates)): the probability the model gives each token at the place
    where a prompt asks it to repeat that token. Prompts are built from ids (the token is
    inserted as itself, whatever its text), so every prompt of a template has one length
    and a batch needs no padding; only the last position's logits are computed."""
    import torch

    device = _device(model)
    head = special_head(tokenizer)
    out = np.zeros((len(ids), len(templates)))
    with torch.inference_mode():
        for k, template in enumerate(templates):
            parts = _template_ids(tokenizer, template)
            for a in range(0, len(ids), batch_size):
                chunk = ids[a : a + batch_size]
                rows = []
                for tok in chunk:
                    row = list(head) + parts[0]
                    for piece in parts[1:]:
                        row += [tok] + piece
                    rows.append(row)
                x = torch.tensor(rows, device=device)
                try:
                    logits = model(input_ids=x, logits_to_keep=1, use_cache=False).logits[:, -1]
                except TypeError:  # an older model class without logits_to_keep
                    logits = model(input_ids=x, use_cache=False).logits[:, -1]
                probs = torch.softmax(logits.float(), dim=-1)
                target = torch.tensor(chunk, device=device)
                out[a : a + len(chunk), k] = probs.gather(1, target[:, None])[:, 0].cpu().numpy()
    return out


# --------------------------------------------------------------------------- entry point

@dataclass
class Indicators:
    """Per-row arrays over the whole vocabulary: ``indicator`` (higher = more under-trained
    looking), input embedding ``norms``, and the ``reference`` ids the indicator used."""

    indicator: np.ndarray
    norms: np.ndarray
    reference: list[int]
    kind: str
    notes: list[str]


def indicators(model: Any, tokenizer: Any, reference_ids: list[int] | None = None) -> Indicators:
    """The embedding-level indicators of :func:`vocab` for every row, without verification."""
    import torch

    unembed = model.get_output_embeddings().weight
    n_rows = int(unembed.shape[0])
    cats, _, _ = token_categories(tokenizer, n_rows)
    norms = embedding_norms(model.get_input_embeddings().weight)
    if reference_ids is None:
        reference = [int(i) for i in np.flatnonzero((cats == 2) | (cats == 3))]
    else:
        bad = [i for i in reference_ids if not 0 <= int(i) < n_rows]
        if bad:
            raise UsageError(f"reference_ids {bad[:5]} are outside the vocabulary (0 .. "
                             f"{n_rows - 1}).")
        reference = sorted({int(i) for i in reference_ids})
    if reference:
        with torch.no_grad():
            indicator, reference = unused_cosine(unembed, reference)
        return Indicators(indicator, norms, reference, "cosine to the mean unused unembedding "
                          "(first principal component removed)", [])
    return Indicators(-norms, norms, [], "input embedding norm (lowest first)",
                      ["no special or unreachable tokens to use as the unused reference; ranked "
                       "by input embedding norm instead (pass reference_ids= to fix)"])


def vocab(model: Any = "default", *, candidates: int = 200, threshold: float = 0.01,
          control: int = 0, reference_ids: list[int] | None = None, seed: int = 0,
          batch_size: int = 64, device: str = "cpu", dtype: str = "float32") -> VocabResult:
    """Find under-trained tokens of a causal LM's vocabulary.

    ``model``: a name ('default' = SmolLM2, 'gemma3-270m', a local folder), a LoadedModel or
    a (model, tokenizer) pair. ``candidates``: how many top-indicator normal tokens are
    verified by prompting (0 = indicators only). ``threshold``: a verified token whose best
    repeat probability stays below it is under-trained. ``control``: also verify this many
    random normal tokens (seeded) to show how often an ordinary token fails.
    ``reference_ids``: the known-unused tokens whose mean defines the indicator (default:
    the special and unreachable tokens)."""
    if not isinstance(candidates, int) or candidates < 0:
        raise UsageError(f"candidates must be a whole number >= 0, got {candidates!r}.")
    if not isinstance(control, int) or control < 0:
        raise UsageError(f"control must be a whole number >= 0, got {control!r}.")
    if not 0 < threshold < 1:
        raise UsageError(f"threshold is a probability between 0 and 1, got {threshold!r}.")
    if reference_ids is not None and not isinstance(reference_ids, list | tuple | set):
        raise UsageError("reference_ids must be a list of token ids.")
    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    lm, tok, name = resolve_causal_lm(model, device=device, dtype=dtype, what="vocab")
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    unembed = lm.get_output_embeddings().weight
    n_rows = int(unembed.shape[0])
    cats, pieces, texts = token_categories(tok, n_rows)
    timings["tokenizer"] = time.perf_counter() - t0
    if len(tok) > n_rows:
        notes.append(f"the tokenizer has {len(tok)} entries but the model {n_rows} rows; ids "
                     f"from {n_rows} on have no embedding and are left out")

    t0 = time.perf_counter()
    ind = indicators(lm, tok, reference_ids)
    indicator, norms, reference = ind.indicator, ind.norms, ind.reference
    notes += ind.notes
    kind = ind.kind
    timings["indicators"] = time.perf_counter() - t0

    normal = np.flatnonzero(cats == 0)
    order = normal[np.argsort(-indicator[normal], kind="stable")]
    rank = np.full(n_rows, -1)
    rank[order] = np.arange(len(order))

    def entry(i: int) -> VocabToken:
        return VocabToken(int(i), pieces[i], texts[i], CATEGORIES[cats[i]],
                          round(float(indicator[i]), 5), round(float(norms[i]), 5),
                          int(rank[i]))

    t0 = time.perf_counter()
    picked = [int(i) for i in order[:candidates]]
    probs = repeat_probabilities(lm, tok, picked, batch_size=batch_size) if picked else None
    result_tokens = []
    for j, i in enumerate(picked):
        t = entry(i)
        t.probs = [_sig(p) for p in probs[j]]
        t.max_prob = _sig(probs[j].max())
        t.under_trained = bool(probs[j].max() < threshold)
        result_tokens.append(t)
    timings["verify"] = time.perf_counter() - t0

    control_stats: dict[str, Any] = {}
    if control:
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        sample = sorted(int(i) for i in rng.choice(normal, min(control, len(normal)),
                                                   replace=False))
        cprobs = repeat_probabilities(lm, tok, sample, batch_size=batch_size).max(1)
        failed = [int(i) for i, p in zip(sample, cprobs, strict=True) if p < threshold]
        control_stats = {"n": len(sample), "failed": len(failed),
                         "failed_ids": failed, "median_max_prob": _sig(np.median(cprobs))}
        timings["control"] = time.perf_counter() - t0

    unreachable = sorted((entry(int(i)) for i in np.flatnonzero(cats == 2)),
                         key=lambda t: -t.indicator)
    counts = {c: int((cats == k).sum()) for k, c in enumerate(CATEGORIES)}
    return VocabResult(name, len(tok), n_rows, kind, threshold, reference, result_tokens,
                       unreachable, counts, [list(t) for t in TEMPLATES], control_stats,
                       {k: round(v, 3) for k, v in timings.items()}, notes)
