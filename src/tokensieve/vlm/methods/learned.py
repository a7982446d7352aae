"""Learned: keep the tokens a small trained head predicts the language model will look at.

The head (:mod:`tokensieve.vlm.look_head`) was distilled from the attention the prompt's
last token pays to the visual tokens at a deep decoder layer — the ``probe`` method's signal
— so it asks nothing of the language model: its cost is an MLP over the image's tokens.
``share`` of the budget goes by its scores; the rest is spread evenly over the tokens not yet
kept (coverage, as in ``probe``). ``head``: a folder with a head trained for this model
(default: the one shipped for the project's small VLM), or a :class:`LookHead` itself.

A head fits one model (its record's fingerprint, :func:`~tokensieve.vlm.look_head.fingerprint`).
On another model, or on a question-agnostic call, ``learned`` refuses in one line — unless
``fallback`` names a method to run instead, as ``"default"`` does (``todre``).
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from ..look_head import LookHead, load_head
from .base import Visual, VLMMethod, top
from .relevance import fraction, share_of, spread, text_of, visual

NO_TEXT = "VLM method 'learned' reads the question; the prompt has no text after the image."


class Learned(VLMMethod):
    """Keep the tokens with the highest predicted deep-layer attention from the question
    (see the module docstring)."""

    name = "learned"
    stages = frozenset({"before"})
    needs = frozenset({"text"})
    question_aware = True

    def __init__(self, head=None, share: float = 0.5, fallback: VLMMethod | None = None):
        if head is not None and not isinstance(head, (str, LookHead)):
            raise UsageError(f"learned: head is a folder holding a trained look head, got "
                             f"{head!r}.")
        self.head = head if head not in (None, "", "default") else None
        self.share = fraction("learned", "share", share)
        if fallback is not None and (not isinstance(fallback, VLMMethod)
                                     or isinstance(fallback, Learned)
                                     or "before" not in fallback.stages):
            raise UsageError(f"learned: fallback is another VLM method that runs before the "
                             f"language model, got {fallback!r}.")
        self.fallback = fallback
        if fallback is not None:
            self.needs = fallback.needs   # with a fallback it runs wherever that one does
        self._used = self.name

    def used(self) -> str:
        return self._used

    def _head(self, v: Visual):
        """The look head for this image's model, or ``None`` when it does not fit (and a
        fallback exists), else a one-line error."""
        if isinstance(self.head, LookHead):
            fits, model = self.head.dim == v.features.shape[-1], self.head
            why = f"the look head was trained for {self.head.dim}-wide visual tokens"
        else:
            model, record = load_head(self.head)
            want = record.get("fingerprint")
            fits = model.dim == v.features.shape[-1] and (want is None or v.model is None
                                                          or want == v.model)
            why = f"the look head was trained for {want or record.get('model')}"
        if fits:
            return model
        if self.fallback is not None:
            return None
        raise UsageError(f"{why}, not this model ({v.model or v.features.shape[-1]}): train one "
                         "with `tokensieve vlm train-look --model FOLDER --out DIR` and pass "
                         "learned:head=DIR, or use method 'default'.")

    def scores(self, v: Visual) -> torch.Tensor:
        """(N,) the head's logits for this image and question."""
        text = text_of(self, v)
        if text is None:
            raise UsageError(NO_TEXT)
        head = self._head(v)
        if head is None:
            raise UsageError("no look head fits this model")
        return head.scores(v.features, text, v.grid)

    def select(self, v: Visual) -> torch.Tensor:
        v = visual(self, v)
        text = text_of(self, v)
        head = self._head(v) if text is not None else None   # resolved once per image
        if head is None and self.fallback is not None:
            self._used = self.fallback.name
            return self.fallback.select(v)
        if text is None:
            raise UsageError(NO_TEXT)
        self._used = self.name
        n_rel = share_of(v.count, self.share)
        keep = torch.zeros(v.n, dtype=torch.bool)
        if n_rel:
            keep = top(head.scores(v.features, text, v.grid), n_rel)
        return spread(keep, v.count)

    def __repr__(self) -> str:
        head = self.head if isinstance(self.head, (str, type(None))) else "LookHead"
        fallback = f", fallback={self.fallback.name}" if self.fallback else ""
        return f"Learned(head={head or 'default'}, share={self.share}{fallback})"
