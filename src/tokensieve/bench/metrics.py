"""Answer-quality and faithfulness metrics (SQuAD-style normalisation for EM / F1)."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    p, g = normalize(prediction).split(), normalize(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g or same == 0:
        return float(p == g)
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def first_answer_line(generated: str) -> str:
    """The reader's answer: its first non-empty line."""
    for line in generated.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def answer_retained(compressed: str, answer: str) -> bool:
    """Is the gold answer still in the compressed prompt (normalised)?"""
    return normalize(answer) in normalize(compressed)


def is_char_subsequence(compressed: str, original: str) -> bool:
    """Are the compressed prompt's non-space characters, in order, a subsequence of the
    original's? (Every faithful drop-only compressor passes; rewriting fails.)"""
    it = iter(c for c in original if not c.isspace())
    return all(any(c == o for o in it) for c in compressed if not c.isspace())


def altered_numbers(compressed: str, original: str) -> list[str]:
    """Numbers in the compressed prompt that do not occur in the original (a cut-off or
    merged number, e.g. '48.2' -> '48.' or '4' + '82' -> '482')."""
    known = set(_NUMBER.findall(original))
    return [n for n in _NUMBER.findall(compressed) if n not in known]
