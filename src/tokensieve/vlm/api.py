"""``vlm.prune(model, method, keep=...)``: the context manager users call."""

from __future__ import annotations

from contextlib import contextmanager

from ..engine.budget import Budget
from ..errors import UsageError
from .adapters import adapter_for
from .inside import install_inside
from .methods import VLMMethod, get_method
from .prune import Before
from .records import Session

STAGES = ("before", "inside")
DEFAULT_KEEP = 0.25
DEFAULT_LAYER = 2   # FastV's k: drop after the third decoder layer
WHAT = {"text": "the question's text (question_aware=True)", "grid": "a patch grid",
        "vision": "the vision tower's features", "project": "a one-to-one projector",
        "attention": "the vision tower's attention",
        "cls_attention": "the vision tower's [CLS] attention",
        "probe": "a probe of the language model's attention"}


def _check(model, method: VLMMethod, stage: str, layer, question_aware: bool, seed):
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; choose 'before' (between the projector "
                         "and the language model) or 'inside' (with layer=k).")
    if stage == "before" and layer is not None:
        raise UsageError("layer= is for stage='inside'; the before stage has no layer.")
    if stage not in method.stages:
        raise UsageError(f"VLM method {method.name!r} runs at stage(s) "
                         f"{', '.join(sorted(method.stages))}, not {stage!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an int, got {seed!r}.")
    if "text" in method.needs and not question_aware:
        raise UsageError(f"VLM method {method.name!r} reads the question; it cannot run with "
                         "question_aware=False. Choose a question-agnostic method.")
    adapter = adapter_for(model)
    missing = sorted(method.needs - adapter.provides) if stage == "before" else []
    if missing:
        raise UsageError(f"VLM method {method.name!r} needs {WHAT.get(missing[0], missing[0])}, "
                         f"which tokensieve.vlm cannot provide for {type(model).__name__}; "
                         "choose another method (see the README's vlm section).")
    return adapter


@contextmanager
def prune(model, method: str | VLMMethod = "default", keep: float | None = None, *,
          count: int | None = None, stage: str = "before", layer: int | None = None,
          question_aware: bool = True, seed: int = 0):
    """Prune the visual tokens a VLM feeds its language model, inside a ``with`` block::

        with vlm.prune(model, "default", keep=0.25) as r:
            out = model.generate(**inputs, max_new_tokens=16)
        r.last   # per image: kept token indices, merge map, tokens per stage, seconds

    ``keep``: fraction of each image's visual tokens kept (default 0.25; ``keep_count``
    rounding, at least one), or ``count``: visual tokens kept per image (clipped to the
    image's). ``keep=1.0`` leaves the model untouched. ``stage="inside"`` drops them from the
    language model's sequence after decoder layer ``layer`` (default 2) instead of before
    it. ``question_aware``: let methods read the prompt's text after each image. ``seed``:
    for methods that draw at random (each image starts from the same seed, whatever batch
    it sits in)."""
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UsageError(f"count is the number of visual tokens kept per image (an int "
                             f">= 1), got {count!r}.")
        if keep is not None:
            raise UsageError("give either keep= (a fraction) or count= (tokens), not both.")
        budget = Budget(count=count)
    else:
        budget = Budget(keep=DEFAULT_KEEP if keep is None else keep)
    method = get_method(method)
    adapter = _check(model, method, stage, layer, question_aware, seed)
    session = Session(method, stage, budget.keep, budget.count)
    if budget.count is None and budget.keep == 1.0:
        yield session   # keep everything: the model runs untouched (bit-identical)
        return
    if stage == "inside":
        handle = install_inside(model, method, keep=budget.keep, count=budget.count,
                                layer=DEFAULT_LAYER if layer is None else layer,
                                image_token_id=adapter.image_token_id,
                                question_aware=question_aware, seed=seed)
        handle.session = session
        try:
            yield session
        finally:
            handle.remove()
        return
    pruner = Before(model, adapter, method, budget.target, question_aware=question_aware,
                    seed=seed, session=session)
    pruner.install()
    try:
        yield session
    finally:
        pruner.remove()
