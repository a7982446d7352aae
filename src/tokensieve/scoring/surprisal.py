"""Per-token self-information -log p(x_i | x_<i) under a causal LM, in nats.

One computation, two entries: :func:`token_surprisal` scores a batch from final hidden
states the model already produced (the KV ``information`` policy reads them inside its
prefill; rows may be left-padded), and :func:`text_surprisal` scores a text of any length
with a sliding window whose windows start with the last ``overlap`` tokens of the previous
one (context carried across windows), each window through :func:`token_surprisal`'s own
output-head step. Predictions go through the output head a bounded number at a time, never
a tokens x vocab tensor at once.

The first-token rule, shared by both: a token that nothing real precedes (a text's first
token when the tokenizer has no BOS and there is no prefix; a KV row's first real token)
gets the highest surprisal of its row. A token seen without context is, in truth, about as
unpredictable as a token gets (its unigram surprisal), and a compressor that cannot score
it should keep it, not give it a middling rank.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from .units import span_scores, visible_starts

# Contrastive scores (text's conditional scorers, inspect's question view) compare against a
# question-shaped but empty prefix, so that merely having some prefix (which helps the first
# sentence most) is not mistaken for relevance.
NEUTRAL_QUESTION = "What does the following text say?"
SURPRISAL_CHUNK_ELEMENTS = 1 << 22   # logits per call to the output head (16 MiB in float32)


def chunk_rows(vocab: int) -> int:
    """Predictions per call to the output head: rows x vocab stays within the bound."""
    return max(1, SURPRISAL_CHUNK_ELEMENTS // max(1, vocab))


def _output_head(model):
    """The output head and the logit soft-cap (Gemma 2) that turn hidden states into logits."""
    cap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    return model.get_output_embeddings(), cap


def _logits(head, cap, hidden: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def predicted_surprisal(model, hidden: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor,
                        cols: torch.Tensor) -> torch.Tensor:
    """(n,) -log p(ids[r, c] | the prediction at hidden[r, c - 1]) for the (row, col) pairs
    (every c >= 1), ``chunk_rows`` predictions per call to the output head."""
    head, cap = _output_head(model)
    step = chunk_rows(head.weight.shape[0])
    out = torch.empty(rows.numel(), dtype=torch.float32, device=hidden.device)
    targets = ids.to(hidden.device)
    for a in range(0, rows.numel(), step):
        r, c = rows[a:a + step], cols[a:a + step]
        logits = _logits(head, cap, hidden[r, c - 1])       # (n, vocab), n <= step
        out[a:a + step] = (torch.logsumexp(logits, -1)
                           - logits.gather(-1, targets[r, c][:, None])[:, 0])
        del logits
    return out


def fill_unpredicted(out: torch.Tensor, scored: torch.Tensor, valid: torch.Tensor
                     ) -> torch.Tensor:
    """The first-token rule: a real token (``valid``) that was not scored gets the highest
    scored surprisal of its row (0 when none was scored); padding gets 0."""
    if not out.shape[-1]:
        return out
    best = out.masked_fill(~scored, float("-inf")).max(-1, keepdim=True).values
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    out = torch.where(valid & ~scored, best.expand_as(out), out)
    return out.masked_fill(~valid, 0)


@torch.no_grad()
def token_surprisal(model, hidden: torch.Tensor, ids: torch.Tensor,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) surprisal in nats from the final normed hidden states (B, T, D) of ``ids``.
    ``valid`` (B, T) marks real tokens (not padding): a token is scored only from a real
    previous position; a row's first real token follows :func:`fill_unpredicted`, padding
    gets 0. batch x positions x vocab per call stays under ``SURPRISAL_CHUNK_ELEMENTS``."""
    b, t, _ = hidden.shape
    device = hidden.device
    valid = torch.ones(b, t, dtype=torch.bool, device=device) if valid is None \
        else valid.to(device=device, dtype=torch.bool)
    out = torch.zeros(b, t, dtype=torch.float32, device=device)
    scored = torch.zeros_like(valid)
    scored[:, 1:] = valid[:, 1:] & valid[:, :-1]            # a real token after a real one
    rows, cols = scored.nonzero(as_tuple=True)
    out[rows, cols] = predicted_surprisal(model, hidden, ids, rows, cols)
    return fill_unpredicted(out, scored, valid)


@torch.no_grad()
def final_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, D) final normed hidden states of one forward with no KV cache (nothing is
    generated after it). Checks, on the last position, that the model's logits are its
    output head applied to them, as :func:`predicted_surprisal` assumes."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in \
        inspect.signature(model.forward).parameters else {}
    out = model(input_ids=ids, use_cache=False, output_hidden_states=True, **keep)
    hidden = out.hidden_states[-1]
    head, cap = _output_head(model)
    mine, theirs = _logits(head, cap, hidden[:, -1]), out.logits[:, -1].float()
    if not torch.allclose(mine, theirs, rtol=1e-2, atol=1e-2 * float(theirs.abs().max())):
        raise UsageError(f"{type(model).__name__}'s logits are not its output head applied to "
                         "its final hidden states (a logit scale?), so its surprisal cannot be "
                         "read from them; use another causal LM, e.g. 'default'.")
    return hidden


@dataclass
class TokenSurprisal:
    """Token character offsets (T, 2) into the text and their surprisal in nats (T,).
    ``starts`` (T,): where each token's visible text begins (byte-level BPE tokens such as
    " quick" start at the space before the word); defaults to ``offsets[:, 0]``."""

    offsets: np.ndarray
    surprisal: np.ndarray
    starts: np.ndarray | None = None

    def aggregate(self, spans: np.ndarray, how: str = "sum") -> np.ndarray:
        """Score each [start, end) span (see :func:`tokensieve.scoring.units.span_scores`)."""
        starts = self.offsets[:, 0] if self.starts is None else self.starts
        return span_scores(self.surprisal, starts, spans, how)[0]


@torch.inference_mode()
def text_surprisal(
    model,
    tokenizer,
    text: str,
    *,
    prefix: str | None = None,
    window: int = 1024,
    overlap: int = 128,
    progress: bool | None = None,
) -> TokenSurprisal:
    """Surprisal of every token of ``text`` given all text before it (up to ``window``
    tokens back) and, if given, ``prefix`` in front of every window (after the BOS)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    offsets = np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    head: list[int] = []
    if tokenizer.bos_token_id is not None:
        head.append(int(tokenizer.bos_token_id))
    if prefix:
        head += tokenizer(prefix, add_special_tokens=False)["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None) or window
    window = max(64, min(window, int(limit) - len(head)))
    overlap = min(overlap, window // 2)
    n = len(ids)
    out = torch.zeros(1, n, dtype=torch.float32)
    scored = torch.zeros(1, n, dtype=torch.bool)
    device = next(model.parameters()).device
    bar = tqdm(total=n, unit="tok", desc="scoring", delay=2.0, disable=progress is False,
               leave=False)
    start = 0
    while start < n:
        ctx_start = max(0, start - overlap)
        end = min(n, ctx_start + window)
        piece = torch.tensor([head + ids[ctx_start:end]], device=device)
        first = len(head) + (start - ctx_start)  # position of token `start` in piece
        lo = max(first, 1)   # the very first token with no BOS and no prefix: not predicted
        cols = torch.arange(lo, piece.shape[1], device=device)
        got = predicted_surprisal(model, final_hidden(model, piece), piece,
                                  torch.zeros_like(cols), cols)
        out[0, start + (lo - first):end] = got.cpu()
        scored[0, start + (lo - first):end] = True
        bar.update(end - start)
        start = end
    bar.close()
    out = fill_unpredicted(out, scored, torch.ones_like(scored))[0]
    return TokenSurprisal(offsets, out.numpy().astype(np.float64), visible_starts(text, offsets))
