"""The typed result of a compression."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ScoredUnit:
    """One unit of the finest level scored: its span, text, score and whether it was kept."""

    start: int
    end: int
    text: str
    score: float
    kept: bool
    protected: bool = False


@dataclass
class CompressionResult:
    """What :func:`tokensieve.compress` returns.

    ``kept_spans`` are [start, end) character spans of the input whose concatenation is
    ``text`` (for ``format="json"`` they are spans of the extracted string values).
    Token counts are in the budget tokenizer; ``timings`` are seconds per stage.
    """

    text: str
    original_tokens: int
    compressed_tokens: int
    target_tokens: int
    kept_spans: list[tuple[int, int]]
    scores: list[ScoredUnit]
    method: str
    granularity: str
    format: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        """Achieved compressed / original tokens."""
        return self.compressed_tokens / self.original_tokens if self.original_tokens else 1.0

    def to_dict(self, include_scores: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["kept_fraction"] = round(self.kept_fraction, 4)
        data["kept_spans"] = [list(s) for s in self.kept_spans]
        if not include_scores:
            data.pop("scores")
        return data
