"""``surprise``: per-token and per-word surprisal -log p of a text under a causal LM.

The numbers come from the one surprisal scorer, :mod:`tokensieve.scoring` (the compressors'
own sliding window, context carried across windows, and their token -> word aggregation), so
what is shown is what text's surprisal methods and kv's ``information`` policy rank. With a
question, each word also gets how much the question lowers its surprisal, measured as the
compressor's contrastive scorer does: against a neutral question of the same
shape, so that merely having a prefix is not mistaken for relevance."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..inputs import decode_text


@dataclass
class TokenScore:
    """One token of the LM: its text, [start, end) characters in the input, surprisal in nats,
    and the index of the word it belongs to (-1 for whitespace between words)."""

    text: str
    start: int
    end: int
    surprisal: float
    word: int = -1


@dataclass
class WordScore:
    """One word (a run of non-space characters): the sum of its tokens' surprisal (nats).

    With a question: ``conditioned`` is the surprisal with the question in front, and
    ``reduction`` = surprisal after a neutral question - ``conditioned`` (positive where the
    question makes the word more expected)."""

    text: str
    start: int
    end: int
    surprisal: float
    tokens: int
    conditioned: float | None = None
    reduction: float | None = None


@dataclass
class SurpriseResult:
    """What :func:`surprise` returns. Surprisal is in nats (divide by ln 2 for bits)."""

    text: str
    model: str
    tokens: list[TokenScore]
    words: list[WordScore]
    total: float
    question: str | None = None
    total_conditioned: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """Mean surprisal per token (nats); exp(mean) is the text's perplexity."""
        return self.total / len(self.tokens) if self.tokens else 0.0

    @property
    def perplexity(self) -> float:
        return float(math.exp(self.mean))

    def top_words(self, k: int = 10, by: str = "surprisal") -> list[WordScore]:
        """The ``k`` words with the highest ``by`` ('surprisal' or 'reduction')."""
        if by == "reduction" and self.question is None:
            raise UsageError("top_words(by='reduction') needs a result computed with a question.")
        if by not in ("surprisal", "reduction"):
            raise UsageError(f"by must be 'surprisal' or 'reduction', got {by!r}.")
        return sorted(self.words, key=lambda w: -(getattr(w, by) or 0.0))[:k]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = self.mean
        data["perplexity"] = self.perplexity
        data["unit"] = "nats"
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=2)
        if path is not None:
            from .render import writable

            writable(path, "JSON").write_text(text + "\n", encoding="utf-8")
        return text

    def rich(self, level: str = "token"):
        """A rich ``Text``: the input on a heat scale (``level`` 'token', 'word' or
        'reduction'), followed by a summary line."""
        from rich.text import Text

        from .render import terminal

        spans, values = self._layer(level)
        body, high = terminal(self.text, spans, values)
        out = Text()
        out.append(body)
        if not self.text.endswith("\n"):
            out.append("\n")
        out.append(self.summary() + f"; colour scale 0 .. {high:.2f} nats ({level})",
                    style="dim")
        return out

    def print(self, level: str = "token", console=None) -> None:
        """Print the heat-coloured text to the terminal."""
        from rich.console import Console

        (console or Console(highlight=False, soft_wrap=True)).print(self.rich(level))

    def summary(self) -> str:
        s = (f"{len(self.tokens)} tokens, {len(self.words)} words, total {self.total:.1f} nats, "
             f"mean {self.mean:.2f} nats/token (perplexity {self.perplexity:.1f}) under "
             f"{self.model}")
        if self.question is not None and self.total_conditioned is not None:
            s += f"; with the question: total {self.total_conditioned:.1f} nats"
        return s

    def _layer(self, level: str):
        if level == "token":
            return [(t.start, t.end) for t in self.tokens], [t.surprisal for t in self.tokens]
        if level == "word":
            return [(w.start, w.end) for w in self.words], [w.surprisal for w in self.words]
        if level == "reduction":
            if self.question is None:
                raise UsageError("the 'reduction' view needs a question; pass question=...")
            return ([(w.start, w.end) for w in self.words],
                    [max(0.0, w.reduction or 0.0) for w in self.words])
        raise UsageError(f"unknown view {level!r}; use token, word or reduction.")

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML page: the text as a heat map of token surprisal (hover a
        token for its score and its word's), and with a question a second map of how much
        the question lowers each word's surprisal. Written to ``path`` when given."""
        import html as _html

        from .render import html_heat, legend_html, page, writable

        tips = []
        for t in self.tokens:
            tip = f"{t.text!r}: {t.surprisal:.2f} nats"
            if t.word >= 0:
                word = self.words[t.word]
                tip += f" | word {word.text[:40]!r}: {word.surprisal:.2f}"
                if word.reduction is not None:
                    tip += f", question lowers it by {word.reduction:.2f}"
            tips.append(tip)
        spans, values = self._layer("token")
        body, high = html_heat(self.text, spans, values, tips)
        parts = [f"<h1>Surprisal under {_html.escape(self.model)}</h1>",
                 f"<p>{_html.escape(self.summary())}. Hover a token for its score.</p>",
                 legend_html(high, "nats per token"), f'<div class="text">{body}</div>']
        if self.question is not None:
            wspans, wvalues = self._layer("reduction")
            wtips = [f"{w.text[:40]!r}: {w.surprisal:.2f} nats alone, {w.conditioned:.2f} with "
                     f"the question, lowered by {w.reduction:.2f}" for w in self.words]
            wbody, whigh = html_heat(self.text, wspans, wvalues, wtips)
            parts += [f"<h2>How much the question lowers each word's surprisal</h2>"
                      f"<p>Question: <b>{_html.escape(self.question)}</b></p>",
                      legend_html(whigh, "nats lower"), f'<div class="text">{wbody}</div>']
        top = "".join(f"<tr><td>{_html.escape(w.text[:60])}</td><td>{w.surprisal:.2f}</td></tr>"
                      for w in self.top_words(15))
        parts.append(f"<h2>Most surprising words</h2><table><tr><th>word</th>"
                     f"<th>nats</th></tr>{top}</table>")
        out = page("tokensieve surprise", "\n".join(parts))
        if path is not None:
            writable(path, "HTML").write_text(out, encoding="utf-8")
        return out

    def to_png(self, path: str | Path, *, dpi: int = 120) -> Path:
        """A PNG of surprisal along the text: per token, a running mean, and the most
        surprising words labelled; with a question, a second panel of per-word reduction."""
        from .render import pyplot, save, writable

        target = writable(path, "PNG")
        plt = pyplot()
        s = np.array([t.surprisal for t in self.tokens])
        rows = 2 if self.question is not None else 1
        fig, axes = plt.subplots(rows, 1, figsize=(11, 3.2 * rows), squeeze=False)
        ax = axes[0, 0]
        x = np.arange(len(s))
        ax.bar(x, s, width=1.0, color="#fd8d3c", linewidth=0, label="token surprisal")
        if len(s) >= 8:
            k = max(3, len(s) // 40)
            run = np.convolve(s, np.ones(k) / k, mode="same")
            ax.plot(x, run, color="#a50026", lw=1.5, label=f"running mean ({k} tokens)")
        first_token = _first_token_of_words(self.tokens, len(self.words))
        rank = np.argsort([-w.surprisal for w in self.words], kind="stable")[:8]
        for k in rank.tolist():
            w, i = self.words[k], first_token[k]
            if i >= 0:
                ax.annotate(w.text[:18], (i, s[i:i + max(1, w.tokens)].max()), fontsize=8,
                            rotation=30, xytext=(2, 4), textcoords="offset points")
        ax.set_xlabel("token position")
        ax.set_ylabel("surprisal (nats)")
        ax.set_title(f"Surprisal along the text ({self.model}; mean {self.mean:.2f} nats/token)")
        ax.set_xlim(-0.5, max(len(s), 1) - 0.5)
        ax.set_ylim(0, max(float(s.max()) if len(s) else 1.0, 1e-3) * 1.3)  # room for labels
        ax.legend(loc="upper right", fontsize=8)
        if self.question is not None:
            ax2 = axes[1, 0]
            red = np.array([w.reduction or 0.0 for w in self.words])
            ax2.bar(np.arange(len(red)), red, width=1.0, linewidth=0,
                    color=np.where(red >= 0, "#31a354", "#de2d26"))
            ax2.axhline(0, color="#444", lw=0.6)
            ax2.set_xlabel("word position")
            ax2.set_ylabel("nats lower")
            ax2.set_title(f"How much the question lowers each word's surprisal: "
                          f"{self.question[:70]!r}")
            for i in np.argsort(-red)[:6]:
                if red[i] > 0:
                    ax2.annotate(self.words[i].text[:18], (i, red[i]), fontsize=8, rotation=30,
                                 xytext=(2, 4), textcoords="offset points")
        return save(fig, target, dpi)


# ---------------------------------------------------------------------------------- input


def check_text(text: Any, what: str = "the text") -> str:
    """A non-empty, non-binary str, or a one-line :class:`InputError`."""
    text = decode_text(text, what)
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}.")
    if not text.strip():
        raise InputError(f"{what} is empty (or only whitespace); pass some text to score.")
    return text


# ------------------------------------------------------------------------------- scoring


def _first_token_of_words(tokens: list[TokenScore], n_words: int) -> list[int]:
    first = [-1] * n_words
    for i, t in enumerate(tokens):
        if t.word >= 0 and first[t.word] < 0:
            first[t.word] = i
    return first


def surprise(
    text: str,
    model: Any = "default",
    question: str | None = None,
    *,
    window: int = 1024,
    overlap: int = 128,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool | None = None,
) -> SurpriseResult:
    """Surprisal of every token and word of ``text`` under a causal LM.

    ``model``: 'default' (the embedded SmolLM2), a local folder, a ``LoadedModel`` or a
    ``(model, tokenizer)`` pair. Texts longer than ``window`` tokens are scored with a
    sliding window that carries ``overlap`` tokens of context. ``question``: also score the
    text with the question in front and report, per word, how much it lowers surprisal
    (three passes instead of one). Progress shows on long inputs (``progress=False`` hides it).
    """
    from ..scoring.lm import resolve_causal_lm
    from ..scoring.segment import find_words
    from ..scoring.surprisal import NEUTRAL_QUESTION, text_surprisal
    from ..scoring.units import span_scores, token_units

    text = check_text(text)
    if question is not None and not str(question).strip():
        raise UsageError("the question is empty; pass a question or leave it out.")
    if window < 64 or overlap < 0:
        raise UsageError(f"window must be >= 64 tokens and overlap >= 0, got window={window}, "
                         f"overlap={overlap}.")
    lm, tokenizer, label = resolve_causal_lm(model, device=device, dtype=dtype,
                                             what="inspect surprise")

    def run(prefix: str | None):
        return text_surprisal(lm, tokenizer, text, prefix=prefix, window=window,
                              overlap=overlap, progress=progress)

    plain = run(None)
    offsets = plain.offsets
    if not len(offsets):
        raise InputError("the text gives no tokens under this tokenizer; pass some text.")
    spans = np.array(find_words(text), dtype=np.int64).reshape(-1, 2)
    # the compressor's own aggregation: a word's tokens are those whose visible text starts
    # in it; a word inside one longer token shows that token's surprisal (with 0 tokens)
    unit_of = token_units(plain.starts, spans)
    tokens = [TokenScore(text[a:b], int(a), int(b), float(s), int(w)) for (a, b), s, w in
              zip(offsets.tolist(), plain.surprisal.tolist(), unit_of.tolist(), strict=True)]
    total, count = span_scores(plain.surprisal, plain.starts, spans)
    cond_total = red = None
    total_conditioned = None
    if question is not None:
        cond = run(f"Question: {question}\n\n")
        neutral = run(f"Question: {NEUTRAL_QUESTION}\n\n")
        cond_total = cond.aggregate(spans)
        neutral_total = neutral.aggregate(spans)
        red = neutral_total - cond_total
        total_conditioned = float(cond.surprisal.sum())
    words = []
    for k, (a, b) in enumerate(spans.tolist()):
        words.append(WordScore(
            text[a:b], a, b, float(total[k]), int(count[k]),
            None if cond_total is None else float(cond_total[k]),
            None if red is None else float(red[k])))
    notes = []
    if tokenizer.bos_token_id is None and question is None:
        notes.append("the tokenizer has no BOS token, so the first token has no context and "
                     "gets the text's highest surprisal (kept first by the compressors)")
    return SurpriseResult(text, label, tokens, words, float(plain.surprisal.sum()), question,
                          total_conditioned, notes)
