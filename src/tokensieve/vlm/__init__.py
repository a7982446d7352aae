"""Prune the visual tokens of vision-language models, before or inside the language model."""

from .methods import DEFAULT_METHOD, METHODS, Inside, Visual, VLMMethod, get_method

__all__ = ["DEFAULT_METHOD", "METHODS", "Inside", "VLMMethod", "Visual", "get_method"]
