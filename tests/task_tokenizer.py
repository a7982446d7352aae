"""The tokenizer the task-generator tests measure lengths with: the embedded SmolLM2's, or a
word-and-punctuation stand-in where the model is not installed."""

from __future__ import annotations

import re


class WordTokenizer:
    """Stand-in when the embedded SmolLM2 is not installed: words and punctuation."""

    def encode(self, text, add_special_tokens=False):
        return re.findall(r"\w+|[^\w\s]", text)


def task_tokenizer():
    from tokensieve.errors import ModelNotFoundError
    from tokensieve.models import load_tokenizer

    try:
        return load_tokenizer("default")
    except ModelNotFoundError:
        return WordTokenizer()
