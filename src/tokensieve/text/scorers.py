"""Scorers for text units. Each maps spans of the text to scores (higher = more
informative / more worth keeping). Model-based scorers share per-token results through the
:class:`ScoringContext`, so the LM runs once per text however many levels it scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import regex

from ..errors import UsageError
from ..scoring.surprisal import NEUTRAL_QUESTION, TokenSurprisal, text_surprisal

_TERM = regex.compile(r"\w+", regex.UNICODE)


@dataclass
class ScoringContext:
    """What scorers may look at: the text, an optional question, the models to use
    (loaded lazily by name) and a cache shared between scorers and levels."""

    text: str
    question: str | None = None
    lm: str = "default"
    encoder: str = "default"
    seed: int = 0
    progress: bool | None = None
    window: int = 1024
    dtype: str = "auto"
    device: str = "cpu"
    cache: dict[str, Any] = field(default_factory=dict)

    def causal_lm(self):
        from ..models import load_causal_lm

        return load_causal_lm(self.lm, dtype=self.dtype, device=self.device)

    def surprisal(self, conditioned: bool | str) -> TokenSurprisal:
        """Token surprisal of the text (cached): plain (False), conditioned on the question
        (True), or after a neutral question of the same shape ('neutral')."""
        key = f"surprisal:{conditioned}"
        if key not in self.cache:
            loaded = self.causal_lm()
            prefix = None
            if conditioned == "neutral":
                prefix = f"Question: {NEUTRAL_QUESTION}\n\n"
            elif conditioned:
                prefix = f"Question: {self.question}\n\n"
            self.cache[key] = text_surprisal(
                loaded.model, loaded.tokenizer, self.text, prefix=prefix,
                window=self.window, progress=self.progress,
            )
        return self.cache[key]

    def require_question(self, scorer: str) -> str:
        if not self.question or not self.question.strip():
            raise UsageError(f"the {scorer!r} scorer ranks text by relevance to a question; "
                             "pass --question (question=...) or choose another method.")
        return self.question


class Scorer:
    """Base class. ``levels`` lists the unit kinds the scorer can rank."""

    name: ClassVar[str] = ""
    levels: ClassVar[tuple[str, ...]] = ("token", "word", "sentence", "document")
    needs_question: ClassVar[bool] = False
    uses_lm: ClassVar[bool] = False
    # spans the scorer's units never cut: 'numbers' (as keep_numbers), 'names' (text.names)
    whole: ClassVar[tuple[str, ...]] = ()
    # the levels granularity='auto' runs for this scorer (None: coarse to fine, see pipeline)
    auto_levels: ClassVar[tuple[str, ...] | None] = None

    def score(self, spans: np.ndarray, level: str, ctx: ScoringContext) -> np.ndarray:
        raise NotImplementedError

    def check_level(self, level: str) -> None:
        if level not in self.levels:
            raise UsageError(
                f"the {self.name!r} scorer ranks {' / '.join(self.levels)} units, not "
                f"{level}s; choose --granularity {self.levels[-1]} or another method."
            )


class SurprisalScorer(Scorer):
    """LM self-information: words sum their subword surprisals, longer units average them."""

    name = "surprisal"
    uses_lm = True
    conditioned = False

    def score(self, spans, level, ctx):
        how = "sum" if level in ("token", "word") else "mean"
        return ctx.surprisal(self.conditioned).aggregate(spans, how)


class QuestionSurprisalScorer(SurprisalScorer):
    """Surprisal with the question in front of the context: -log p(x_i | q, x_<i)."""

    name = "question-surprisal"
    needs_question = True
    conditioned = True

    def score(self, spans, level, ctx):
        ctx.require_question(self.name)
        return super().score(spans, level, ctx)


def neutral_and_conditioned(name: str, spans, level: str, ctx: ScoringContext):
    """Unit surprisal after a neutral question and after the real one (words sum their
    tokens, longer units average them)."""
    ctx.require_question(name)
    how = "sum" if level in ("token", "word") else "mean"
    return (ctx.surprisal("neutral").aggregate(spans, how),
            ctx.surprisal(True).aggregate(spans, how))


class ContrastiveScorer(Scorer):
    """How much the question lowers a unit's surprisal (LongLLMLingua's contrastive idea):
    s(x | neutral question) - s(x | q); high where the question makes the text
    predictable, i.e. relevant."""

    name = "contrastive"
    uses_lm = True
    needs_question = True

    def score(self, spans, level, ctx):
        neutral, cond = neutral_and_conditioned(self.name, spans, level, ctx)
        return neutral - cond


class QuestionAwareScorer(Scorer):
    """Information plus relevance: surprisal after a neutral question, plus how much the
    real question lowers it. Plain conditioned surprisal alone would drop exactly the words
    the question mentions (they become predictable); the contrastive term keeps them."""

    name = "question-aware"
    uses_lm = True
    needs_question = True

    def score(self, spans, level, ctx):
        neutral, cond = neutral_and_conditioned(self.name, spans, level, ctx)
        return neutral + (neutral - cond)


def embed(texts: list[str], encoder_name: str = "default", batch_size: int = 64, *,
          device: str = "cpu") -> np.ndarray:
    """Unit-length sentence embeddings (mean pooling) from the encoder, run on ``device``
    (every batch is moved there; the result comes back as a float32 numpy array)."""
    import torch

    from ..models import load_encoder

    loaded = load_encoder(encoder_name, device=device)
    where = next(loaded.model.parameters()).device
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = loaded.tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                                     max_length=256, return_tensors="pt").to(where)
            hidden = loaded.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)


class EncoderRelevanceScorer(Scorer):
    """Cosine similarity between each unit and the question under the sentence encoder."""

    name = "encoder"
    levels = ("sentence", "document")
    needs_question = True

    def score(self, spans, level, ctx):
        q = ctx.require_question(self.name)
        texts = [ctx.text[s:e] for s, e in spans]
        vecs = embed([q] + texts, ctx.encoder, device=ctx.device)
        return vecs[1:] @ vecs[0]


class BM25Scorer(Scorer):
    """Okapi BM25 relevance of each unit to the question's terms."""

    name = "bm25"
    levels = ("sentence", "document")
    needs_question = True

    def score(self, spans, level, ctx):
        from rank_bm25 import BM25Okapi

        q = ctx.require_question(self.name)
        docs = [_TERM.findall(ctx.text[s:e].lower()) or [""] for s, e in spans]
        return np.asarray(BM25Okapi(docs).get_scores(_TERM.findall(q.lower())), dtype=np.float64)


def _tfidf(texts: list[str]) -> np.ndarray:
    terms = [_TERM.findall(t.lower()) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for ts in terms for w in ts}))}
    tf = np.zeros((len(texts), max(1, len(vocab))))
    for r, ts in enumerate(terms):
        for w in ts:
            tf[r, vocab[w]] += 1
    df = (tf > 0).sum(0)
    m = tf * np.log((1 + len(texts)) / (1 + df))[None, :]
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norm == 0, 1, norm)


class LexRankScorer(Scorer):
    """LexRank: centrality of each sentence in the TF-IDF cosine graph (question-free)."""

    name = "lexrank"
    levels = ("sentence", "document")
    threshold = 0.1
    damping = 0.85

    def score(self, spans, level, ctx):
        n = len(spans)
        if n == 0:
            return np.zeros(0)
        v = _tfidf([ctx.text[s:e] for s, e in spans])
        adj = ((v @ v.T) >= self.threshold).astype(np.float64)
        deg = adj.sum(1, keepdims=True)
        trans = adj / np.where(deg == 0, 1, deg)
        p = np.full(n, 1.0 / n)
        for _ in range(100):
            nxt = (1 - self.damping) / n + self.damping * trans.T @ p
            if np.abs(nxt - p).sum() < 1e-9:
                break
            p = nxt
        return p * n


class WordFrequencyScorer(Scorer):
    """Rarity under the ``wordfreq`` lists: 8 - Zipf frequency (rare words score high)."""

    name = "wordfreq"
    language = "en"

    def score(self, spans, level, ctx):
        from wordfreq import zipf_frequency

        cache: dict[str, float] = ctx.cache.setdefault("wordfreq", {})

        def rarity(word: str) -> float:
            if word not in cache:
                cache[word] = 8.0 - zipf_frequency(word, self.language)
            return cache[word]

        out = np.empty(len(spans))
        for k, (s, e) in enumerate(spans):
            terms = _TERM.findall(ctx.text[s:e]) or [ctx.text[s:e]]
            vals = [rarity(t) for t in terms]
            out[k] = max(vals) if level in ("token", "word") else float(np.mean(vals))
        return out


class LearnedScorer(Scorer):
    """The learned keep-classifier (:mod:`.classifier`): a head on MiniLM's token states
    trained on question-aware labels, so it ranks from the text alone, with no question and
    no causal LM. Words take their best token, longer units the mean. Names and numbers
    are kept or dropped whole (the labels rank them as one: a cloze answer is all of it)."""

    name = "learned"
    whole = ("names", "numbers")
    # on the dev split, words straight away kept more answers than sentences first (.87 vs
    # .77 at keep 0.5, .68 vs .45 at 0.25): a question-free sentence pick drops facts whole
    auto_levels = ("word",)

    def score(self, spans, level, ctx):
        from .classifier import keep_scores

        if "learned" not in ctx.cache:
            ctx.cache["learned"] = keep_scores(ctx.text)
        return ctx.cache["learned"].aggregate(spans, "max" if level in ("token", "word")
                                              else "mean")


class RandomScorer(Scorer):
    """Uniform random scores from the context's seed: the baseline for every benchmark."""

    name = "random"

    def score(self, spans, level, ctx):
        level_id = ("token", "word", "sentence", "document").index(level)
        rng = np.random.default_rng([ctx.seed, len(spans), level_id])
        return rng.random(len(spans))


SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls
    for cls in (SurprisalScorer, QuestionAwareScorer, QuestionSurprisalScorer, ContrastiveScorer,
                EncoderRelevanceScorer, BM25Scorer, LexRankScorer, WordFrequencyScorer,
                LearnedScorer, RandomScorer)
}
