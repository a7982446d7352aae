"""Prompt compression: keep the informative words, sentences and documents of a prompt."""

from .compressor import FORMATS, GRANULARITIES, METHODS, compress
from .result import CompressionResult, ScoredUnit

__all__ = ["FORMATS", "GRANULARITIES", "METHODS", "CompressionResult", "ScoredUnit", "compress"]
