"""Accuracy of a VLM on the questions of :mod:`.vlm_data`, per question type, against chance.

Answers come from the real path: the processor turns image + chat prompt into
``pixel_values`` and ``input_ids`` (left-padded batches), ``model.generate`` decodes greedily,
and the text is compared after :func:`.vlm_data.normalise_answer`. Chance per type is the
share of the most frequent answer among the evaluated questions (what always giving that
answer would score).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import UsageError
from . import vlm_data
from .vlm_train import prompt_text

MAX_NEW_TOKENS = 8
MAX_EXAMPLES = 100_000


@dataclass
class TypeScore:
    n: int
    correct: int
    chance: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "correct": self.correct, "accuracy": round(self.accuracy, 4),
                "chance": round(self.chance, 4)}


@dataclass
class EvalResult:
    split: str
    scores: dict[str, TypeScore]
    predictions: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self, predictions: bool = False) -> dict:
        out = {"split": self.split, "seconds": round(self.seconds, 1),
               "types": {k: v.to_dict() for k, v in self.scores.items()}}
        if predictions:
            out["predictions"] = self.predictions
        return out

    def table(self) -> str:
        rows = ["| type | n | accuracy | chance |", "|---|---:|---:|---:|"]
        for k, v in self.scores.items():
            rows.append(f"| {k} | {v.n} | {v.accuracy:.1%} | {v.chance:.1%} |")
        return "\n".join(rows)


def inputs_for(processor, images, questions: list[str]):
    """The processor's left-padded batch for one question per image (chat prompts)."""
    prompts = [prompt_text(processor, q) for q in questions]
    return processor(images=list(images), text=prompts, padding=True, return_tensors="pt")


def answer(model, processor, images, questions: list[str], *,
           max_new_tokens: int = MAX_NEW_TOKENS, **generate_kwargs) -> list[str]:
    """Greedy answers of ``model`` to one question per image (one left-padded batch)."""
    import torch

    inputs = {k: v.to(model.device) for k, v in inputs_for(processor, images, questions).items()}
    kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens,
              "pad_token_id": processor.tokenizer.pad_token_id, **generate_kwargs}
    with torch.no_grad():
        out = model.generate(**inputs, **kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.batch_decode(new, skip_special_tokens=True)


def chance_levels(examples) -> dict[str, float]:
    """Per type: the share of the most frequent answer."""
    by_type: dict[str, Counter] = {}
    for ex in examples:
        by_type.setdefault(ex.qtype, Counter())[ex.answer] += 1
    return {k: c.most_common(1)[0][1] / sum(c.values()) for k, c in by_type.items()}


def score(examples, predicted: list[str]) -> dict[str, TypeScore]:
    """Per question type (and ``corner`` = corner_what + corner_which, ``all``): correct
    answers after normalisation, with the chance levels of the same examples."""
    if len(examples) != len(predicted):
        raise ValueError(f"{len(examples)} examples but {len(predicted)} answers")
    groups = {q: [] for q in vlm_data.QTYPES}
    for ex, text in zip(examples, predicted, strict=True):
        groups[ex.qtype].append(vlm_data.normalise_answer(text) == ex.answer)
    chance = chance_levels(examples)
    out = {q: TypeScore(len(v), sum(v), chance.get(q, 0.0)) for q, v in groups.items() if v}
    corner = [q for q in ("corner_what", "corner_which") if q in out]
    if corner:
        n = sum(out[q].n for q in corner)
        out["corner"] = TypeScore(n, sum(out[q].correct for q in corner),
                                  sum(out[q].chance * out[q].n for q in corner) / n)
    n = sum(len(v) for v in groups.values())
    out["all"] = TypeScore(n, sum(sum(v) for v in groups.values()),
                           sum(chance[q] * len(groups[q]) for q in chance) / max(1, n))
    return out


def evaluate(model, processor, data: vlm_data.VLMData, *, limit: int | None = None,
             batch_size: int = 8, max_new_tokens: int = MAX_NEW_TOKENS,
             progress: bool = True, **generate_kwargs) -> EvalResult:
    """Accuracy per question type on ``data`` (its first ``limit`` questions)."""
    import time

    from tqdm.auto import tqdm

    examples = data.examples[:limit] if limit is not None else data.examples
    if len(examples) > MAX_EXAMPLES:
        raise UsageError(f"at most {MAX_EXAMPLES} questions per evaluation, got {len(examples)}")
    if not 1 <= batch_size <= 256:
        raise UsageError(f"batch_size must be 1..256, got {batch_size}")
    t0 = time.monotonic()
    predicted: list[str] = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"eval {data.split}",
                      disable=not progress):
        chunk = examples[start:start + batch_size]
        predicted += answer(model, processor, data.images([e.image for e in chunk]),
                            [e.question for e in chunk], max_new_tokens=max_new_tokens,
                            **generate_kwargs)
    preds = [{"qtype": e.qtype, "question": e.question, "answer": e.answer, "predicted": p}
             for e, p in zip(examples, predicted, strict=True)]
    return EvalResult(data.split, score(examples, predicted), preds, time.monotonic() - t0)
