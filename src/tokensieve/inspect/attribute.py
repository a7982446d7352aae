"""Which context words an answer depends on: leave-one-out attribution under a causal LM.

The score of a unit (a sentence or a word of the context) is how much the answer's
log-likelihood drops when that unit is removed from the context:
``log p(answer | prompt(context)) - log p(answer | prompt(context without the unit))``,
in nats; positive = the answer needs it. Every sentence is scored first (one batched forward
per sentence), then every word inside the top sentences, until ``max_forwards`` forwards
have run. A cheap estimate from one forward (and one backward) scores every unit at once:
gradient x input (the first-order change of the log-likelihood when a token's embedding is
removed; signed), its per-token L2 norm (``gradnorm``: unsigned, how much the token matters
either way) or the attention the answer positions pay to each token; the Spearman correlation
between the cheap and the leave-one-out scores says how far the cheap one can stand in.

The prompt is the text benchmark reader's: the context, then "Answer the question with a
short phrase from the text above. Question: ...", in the model's chat template when it has
one (else plain text ending in "Answer:").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..scoring.lm import resolve_causal_lm
from .tokens import special_head

CHEAP_METHODS = ("gradnorm", "gradxinput", "attention")
INSTRUCTION = "Answer the question with a short phrase from the text above."


@dataclass
class AttributedUnit:
    """A sentence or word of the context: [start, end) characters, its text, ``loo`` (drop
    of the answer's log-likelihood in nats when it is removed; None where it was not run)
    and ``cheap`` (the one-pass estimate); ``sentence``: the sentence it lies in."""

    index: int
    start: int
    end: int
    text: str
    sentence: int
    cheap: float
    loo: float | None = None


@dataclass
class AttributionResult:
    """What :func:`attribute` returns: ``sentences`` and ``words`` of the context in order;
    ``answer_logprob``: log p(answer | full prompt); ``spearman_sentences`` /
    ``spearman_words``: cheap vs leave-one-out over the units both scored (None when fewer
    than three); ``forwards``: sequences run for the leave-one-out scores (the full one
    included); ``agreement``: the same two Spearman figures for every cheap method run, and
    ``cheap_scores`` their per-sentence and per-word scores."""

    model: str
    question: str
    answer: str
    answer_logprob: float
    answer_tokens: int
    sentences: list[AttributedUnit]
    words: list[AttributedUnit]
    cheap_method: str
    spearman_sentences: float | None
    spearman_words: float | None
    forwards: int
    max_forwards: int
    agreement: dict[str, dict[str, float | None]] = field(default_factory=dict)
    cheap_scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def top_sentences(self, k: int = 3) -> list[AttributedUnit]:
        scored = [u for u in self.sentences if u.loo is not None]
        return sorted(scored, key=lambda u: -u.loo)[:k]

    def top_words(self, k: int = 10) -> list[AttributedUnit]:
        """The ``k`` words whose removal lowers the answer's likelihood most."""
        scored = [u for u in self.words if u.loo is not None]
        return sorted(scored, key=lambda u: -u.loo)[:k]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, limit: int = 10) -> str:
        lines = [f"log p(answer) = {self.answer_logprob:.3f} nats over {self.answer_tokens} "
                 f"tokens; {self.forwards} forwards (budget {self.max_forwards})",
                 f"{'loo':>8} {'cheap':>9}  sentence"]
        for u in self.top_sentences(limit):
            text = u.text if len(u.text) <= 90 else u.text[:89] + "…"
            lines.append(f"{u.loo:>8.3f} {u.cheap:>9.3f}  {text}")
        lines.append(f"{'loo':>8} {'cheap':>9}  word")
        for u in self.top_words(limit):
            lines.append(f"{u.loo:>8.3f} {u.cheap:>9.3f}  {u.text}")
        rho = [f"{name} {value:.2f}" for name, value in
               (("sentences", self.spearman_sentences), ("words", self.spearman_words))
               if value is not None]
        if rho:
            lines.append(f"Spearman of {self.cheap_method} vs leave-one-out: " + ", ".join(rho))
        return "\n".join(lines)


def spearman(a: Any, b: Any) -> float | None:
    """Spearman rank correlation (ties get their average rank, as in
    :func:`tokensieve.inspect.events.spearman`); None for fewer than 3 values or a constant
    input."""
    from .events import spearman as rank_correlation

    if len(np.asarray(a)) < 3:
        return None
    rho = rank_correlation(a, b)
    return None if np.isnan(rho) else rho


class _Prompt:
    """Builds the token ids of prompt(context) + answer, and finds the context's characters
    in the prompt's tokens."""

    def __init__(self, tokenizer: Any, question: str, answer: str, chat: bool) -> None:
        self.tok, self.question, self.chat = tokenizer, question, chat
        self.head = [] if chat else special_head(tokenizer)
        lead = "" if chat else " "
        self.answer = tokenizer(lead + answer.strip(), add_special_tokens=False)["input_ids"]

    def text(self, context: str) -> str:
        q = f"\nQuestion: {self.question}" if self.question.strip() else ""
        body = f"{context}\n\n{INSTRUCTION}{q}"
        if self.chat:
            return self.tok.apply_chat_template([{"role": "user", "content": body}],
                                                add_generation_prompt=True, tokenize=False)
        return body + "\nAnswer:"

    def ids(self, context: str) -> list[int]:
        return self.head + self.tok(self.text(context), add_special_tokens=False)["input_ids"]

    def context_tokens(self, context: str) -> tuple[list[int], np.ndarray]:
        """(ids, for each token the context character it ends in, or -1)."""
        text = self.text(context)
        at = text.find(context)
        if at < 0:  # a chat template that trims its content
            core = context.strip()
            at = text.find(core) - (len(context) - len(context.lstrip()))
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        where = np.full(len(self.head) + len(enc["input_ids"]), -1)
        for k, (s, e) in enumerate(enc["offset_mapping"]):
            c = e - 1 - at
            if e > s and 0 <= c < len(context):
                where[len(self.head) + k] = c
        return self.head + list(enc["input_ids"]), where


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


class _PrefixCache:
    """The key/value states of one reference prompt, computed once, so that prompts sharing
    its first P tokens (the context with a later unit removed) only run their own suffix.
    Only plain (non-sliding) dynamic cache layers can be cut at any P; otherwise None."""

    def __init__(self, model: Any, reference: list[int]) -> None:
        import torch

        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([reference], device=device), use_cache=True,
                        logits_to_keep=1)
        cache = out.past_key_values
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(layer, "is_sliding", True) or
                             getattr(layer, "keys", None) is None for layer in layers):
            raise TypeError("no plain dynamic cache")
        self.states = [(layer.keys, layer.values) for layer in layers]

    def take(self, length: int, batch: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.states):
            cache.update(k[:, :, :length].expand(batch, -1, -1, -1).contiguous(),
                         v[:, :, :length].expand(batch, -1, -1, -1).contiguous(), i)
        return cache


def _answer_logprobs(model: Any, rows: list[list[int]], answer: list[int], batch_size: int,
                     reference: list[int] | None = None) -> np.ndarray:
    """log p(answer | row) for each row of prompt ids (the answer is appended). Rows are
    batched left-padded with explicit positions, and only the answer positions' logits are
    computed. With a ``reference`` prompt, the tokens a batch shares with it are not run
    again: its cached states are reused and only the rest of each row goes through."""
    import torch

    device = next(model.parameters()).device
    n = len(answer)
    target = torch.tensor(answer, device=device)
    prefix = None
    if reference is not None:
        try:
            prefix = _PrefixCache(model, reference)
        except (TypeError, ValueError, AttributeError):
            prefix = None
    shared = np.array([_common_prefix(r, reference) if prefix else 0 for r in rows])
    # batch rows that share as much as possible; a row keeps >= 1 token of its own
    shared = np.minimum(shared, [len(r) - 1 for r in rows])
    order = np.lexsort(([len(r) for r in rows], -shared))
    out = np.zeros(len(rows))
    with torch.inference_mode():
        for a in range(0, len(rows), batch_size):
            idx = order[a : a + batch_size]
            cut = int(shared[idx].min())
            seqs = [rows[i][cut:] + answer for i in idx]
            width = max(len(s) for s in seqs)
            x = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
            mask = torch.zeros(len(seqs), cut + width, dtype=torch.long, device=device)
            mask[:, :cut] = 1
            for j, s in enumerate(seqs):
                x[j, width - len(s):] = torch.tensor(s, device=device)
                mask[j, cut + width - len(s):] = 1
            pos = cut + (mask[:, cut:].cumsum(1) - 1).clamp_min(0)
            kwargs = {"input_ids": x, "attention_mask": mask, "position_ids": pos}
            if cut:
                kwargs.update(past_key_values=prefix.take(cut, len(seqs)), use_cache=True,
                              cache_position=torch.arange(cut, cut + width, device=device))
            else:
                kwargs["use_cache"] = False
            try:
                logits = model(**kwargs, logits_to_keep=n + 1).logits[:, :n]
            except TypeError:
                logits = model(**kwargs).logits[:, -n - 1 : -1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            got = logp.gather(2, target[None, :, None].expand(len(seqs), n, 1))[..., 0].sum(1)
            out[idx] = got.cpu().numpy()
    return out


def _cheap_token_scores(model: Any, ids: list[int], answer: list[int], method: str) -> tuple[
        np.ndarray, float]:
    """(per-prompt-token score, log p(answer | prompt)) from one pass."""
    import torch

    device = next(model.parameters()).device
    n = len(answer)
    x = torch.tensor([ids + answer], device=device)
    target = x[0, len(ids):]
    if method in ("gradxinput", "gradnorm"):
        emb = model.get_input_embeddings()(x).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs_embeds=emb, use_cache=False).logits[0, len(ids) - 1 : -1]
            logp = torch.log_softmax(logits.float(), -1).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, emb)
        product = (grad * emb.detach()).float()[0, : len(ids)]
        score = product.sum(-1) if method == "gradxinput" else product.norm(dim=-1)
        return score.cpu().numpy(), float(logp.detach())
    # attention received from the positions that predict the answer, mean over layers/heads
    previous = getattr(model.config, "_attn_implementation", None)
    try:
        if previous != "eager":
            model.set_attn_implementation("eager")
        with torch.inference_mode():
            out = model(input_ids=x, output_attentions=True, use_cache=False)
    finally:
        if previous not in (None, "eager"):
            model.set_attn_implementation(previous)
    rows = slice(len(ids) - 1, len(ids) - 1 + n)
    att = torch.stack([a[0, :, rows, : len(ids)].float().mean((0, 1)) for a in out.attentions])
    logp = torch.log_softmax(out.logits[0, len(ids) - 1 : -1].float(), -1)
    return att.mean(0).cpu().numpy(), float(logp.gather(1, target[:, None]).sum())


def _without(context: str, spans: np.ndarray, i: int) -> str:
    """The context with unit i removed, and the white space after it (before it for the
    last unit), so no doubled space is left behind."""
    start, end = int(spans[i, 0]), int(spans[i, 1])
    if i + 1 < len(spans):
        end = int(spans[i + 1, 0]) if context[end : spans[i + 1, 0]].isspace() else end
    elif i > 0 and context[spans[i - 1, 1] : start].isspace():
        start = int(spans[i - 1, 1])
    return context[:start] + context[end:]


def _check(name: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__}.")
    if "\x00" in value:
        raise InputError(f"{name} contains NUL bytes, so it looks binary; pass UTF-8 text.")
    if not allow_empty and not value.strip():
        raise InputError(f"{name} is empty or only whitespace; attribution needs a "
                         f"non-empty {name}.")
    return value


def attribute(context: str, question: str, answer: str, model: Any = "default", *,
              max_forwards: int = 128, top_sentences: int = 3,
              cheap: str | list[str] = "gradnorm",
              chat: str | bool = "auto", batch_size: int = 8, reuse: bool = True,
              device: str = "cpu",
              dtype: str = "float32") -> AttributionResult:
    """Score each sentence and word of ``context`` by how much the answer's log-likelihood
    needs it (see the module docstring).

    ``model``: a name ('default' = SmolLM2), a LoadedModel or a (model, tokenizer) pair.
    ``max_forwards``: budget of leave-one-out sequences (the full prompt included); when the
    context has more sentences than the budget allows, the sentences with the highest
    cheap scores get one (noted). ``top_sentences``: how many of the best sentences have
    their words scored one by one. ``cheap``: 'gradnorm' (the default: its top sentence was
    the leave-one-out top sentence on 9 of 12 text-benchmark items, against 3 and 2 for
    'gradxinput' and 'attention'), 'gradxinput' or 'attention', or a list of them (the
    first is reported per unit, all get their Spearman figures in ``agreement``). ``chat``:
    use the tokenizer's chat template ('auto': when it has one). ``reuse``: run only what
    follows the removed unit, reusing the full prompt's cached states for the tokens before
    it (models with plain caches; others run every prompt whole)."""
    t_start = time.perf_counter()
    context = _check("context", context)
    question = _check("question", question, allow_empty=True)
    answer = _check("answer", answer)
    methods = [cheap] if isinstance(cheap, str) else list(cheap)
    unknown = [m for m in methods if m not in CHEAP_METHODS]
    if not methods or unknown:
        raise UsageError(f"unknown cheap method {(unknown or [cheap])[0]!r}; choose from "
                         f"{', '.join(CHEAP_METHODS)}.")
    if not isinstance(max_forwards, int) or max_forwards < 2:
        raise UsageError(f"max_forwards must be a whole number >= 2, got {max_forwards!r}.")
    if not isinstance(top_sentences, int) or top_sentences < 0:
        raise UsageError(f"top_sentences must be a whole number >= 0, got {top_sentences!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    from ..scoring.segment import segment

    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    lm, tok, name = resolve_causal_lm(model, device=device, dtype=dtype, what="attribute")
    timings["load"] = time.perf_counter() - t0
    use_chat = bool(getattr(tok, "chat_template", None)) if chat == "auto" else bool(chat)
    prompt = _Prompt(tok, question, answer, use_chat)

    seg = segment(context)
    words = seg.spans("word")
    sent_spans = seg.spans("sentence")
    sentence_of = seg.sentence_of

    # cheap estimates: token scores -> words (a token counts for the word its last character
    # is in) -> sentences (sum of their words); the first method is the reported one
    t0 = time.perf_counter()
    ids, where = prompt.context_tokens(context)
    inside = where >= 0
    w_idx = np.searchsorted(words[:, 1], where[inside], side="right")
    ok = w_idx < len(words)
    ok[ok] &= words[w_idx[ok], 0] <= where[inside][ok]
    cheap_words, cheap_sents, logp_cheap = {}, {}, None
    for method in methods:
        token_scores, logp = _cheap_token_scores(lm, ids, prompt.answer, method)
        logp_cheap = logp if logp_cheap is None else logp_cheap
        per_word = np.zeros(len(words))
        np.add.at(per_word, w_idx[ok], token_scores[inside][ok])
        cheap_words[method] = per_word
        cheap_sents[method] = np.bincount(sentence_of, weights=per_word,
                                          minlength=len(sent_spans))
    word_cheap, sent_cheap = cheap_words[methods[0]], cheap_sents[methods[0]]
    timings["cheap"] = time.perf_counter() - t0

    # leave-one-out: sentences, then the words of the top sentences
    t0 = time.perf_counter()
    n_sent = len(sent_spans)
    if n_sent + 1 <= max_forwards:
        sent_todo = list(range(n_sent))
    else:
        k = max(1, (max_forwards - 1) // 2)
        sent_todo = sorted(np.argsort(-sent_cheap, kind="stable")[:k].tolist())
        notes.append(f"{n_sent} sentences exceed the budget of {max_forwards} forwards: "
                     f"leave-one-out ran for the {k} with the highest cheap scores")
    full = prompt.ids(context)
    rows = [full] + [prompt.ids(_without(context, sent_spans, i)) for i in sent_todo]
    got = _answer_logprobs(lm, rows, prompt.answer, batch_size, full if reuse else None)
    base = float(got[0])
    sent_loo = np.full(n_sent, np.nan)
    sent_loo[sent_todo] = base - got[1:]
    forwards = len(rows)
    timings["loo_sentences"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    word_loo = np.full(len(words), np.nan)
    best = [int(i) for i in np.argsort(-np.nan_to_num(sent_loo, nan=-np.inf), kind="stable")
            if not np.isnan(sent_loo[i])][:top_sentences]
    todo = [int(w) for s in best for w in np.flatnonzero(sentence_of == s)]
    room = max_forwards - forwards
    if len(todo) > room:
        notes.append(f"word leave-one-out stopped at the budget: {room} of {len(todo)} words "
                     "of the top sentences scored")
        todo = todo[:room]
    if todo and len(words) > 1:
        got = _answer_logprobs(lm, [prompt.ids(_without(context, words, w)) for w in todo],
                               prompt.answer, batch_size, full if reuse else None)
        word_loo[todo] = base - got
        forwards += len(todo)
    timings["loo_words"] = time.perf_counter() - t0

    def units(spans: np.ndarray, cheap_scores: np.ndarray, loo: np.ndarray,
              parent: np.ndarray) -> list[AttributedUnit]:
        return [AttributedUnit(i, int(a), int(b), context[a:b], int(parent[i]),
                               round(float(cheap_scores[i]), 6),
                               None if np.isnan(loo[i]) else round(float(loo[i]), 6))
                for i, (a, b) in enumerate(spans)]

    sentences = units(sent_spans, sent_cheap, sent_loo, np.arange(n_sent))
    word_units = units(words, word_cheap, word_loo, sentence_of)
    done_s, done_w = ~np.isnan(sent_loo), ~np.isnan(word_loo)
    if abs(logp_cheap - base) > 0.05 + 0.02 * abs(base):
        notes.append(f"the cheap pass and the batched pass disagree on log p(answer) "
                     f"({logp_cheap:.3f} vs {base:.3f} nats)")
    agreement = {m: {"sentences": spearman(cheap_sents[m][done_s], sent_loo[done_s]),
                     "words": spearman(cheap_words[m][done_w], word_loo[done_w])}
                 for m in methods}
    timings["total"] = time.perf_counter() - t_start
    return AttributionResult(
        name, question, answer, round(base, 6), len(prompt.answer), sentences, word_units,
        methods[0], agreement[methods[0]]["sentences"], agreement[methods[0]]["words"],
        forwards, max_forwards, agreement,
        {m: {"sentences": [round(float(x), 6) for x in cheap_sents[m]],
             "words": [round(float(x), 6) for x in cheap_words[m]]} for m in methods},
        {k: round(v, 3) for k, v in timings.items()}, notes)
