"""A tokenizer's vocabulary as the inspectors see it (``vocab``, ``sticky``, ``attribute``):
the category of every id, printable pieces and the ids put in front of a text."""

from __future__ import annotations

from typing import Any

import numpy as np

CATEGORIES = ("normal", "partial", "unreachable", "special")
_ANCHORS = ("1", "a", "x")  # prefixes after which a piece that needs context may appear


_CATEGORY_CACHE: dict[tuple[int, int], tuple[np.ndarray, list[str], list[str]]] = {}


def token_categories(tokenizer: Any, n_rows: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(category index into :data:`CATEGORIES` per id, vocabulary pieces, decoded strings)
    for ids 0 .. n_rows-1 (cached per tokenizer). A normal token is one that some text
    encodes to: decode then encode gives it back, alone or after a short prefix (WordPiece
    continuations); a partial one decodes to an incomplete UTF-8 sequence."""
    key = (id(tokenizer), n_rows)
    if key in _CATEGORY_CACHE:
        return _CATEGORY_CACHE[key]
    ids = list(range(n_rows))
    pieces = [p if p is not None else "" for p in tokenizer.convert_ids_to_tokens(ids)]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(int(i))
    cats = np.zeros(n_rows, dtype=np.int8)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    retry: list[int] = []
    for i in ids:
        if i in special:
            cats[i] = 3
        elif encoded[i] != [i]:
            if "\ufffd" in texts[i] and "\ufffd" not in pieces[i]:
                cats[i] = 1
            else:
                retry.append(i)
    # in context: after a short prefix (WordPiece '##ing' is reached in '1ing' or 'aing';
    # a prefix can merge with the piece, so a few are tried)
    for prefix in _ANCHORS:
        if not retry:
            break
        anchor = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        joined = tokenizer.batch_decode([anchor + [i] for i in retry],
                                        clean_up_tokenization_spaces=False)
        again = tokenizer(joined, add_special_tokens=False)["input_ids"]
        retry = [i for i, enc in zip(retry, again, strict=True) if i not in enc]
    cats[retry] = 2
    _CATEGORY_CACHE[key] = (cats, pieces, texts)
    return cats, pieces, texts


def special_head(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts in front of a text by default (BOS), nothing else."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return list(full[:k])
    return []


def show_piece(piece: str, width: int = 28) -> str:
    """A vocabulary piece printable in a table: escaped, cut to ``width`` characters."""
    text = repr(piece)[1:-1]
    return text if len(text) <= width else text[: width - 1] + "…"
