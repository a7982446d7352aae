"""One record in, one record out: the text to compress (or why there is none) and its
result columns with a status, so a bad record never fails the job.

Statuses: ``ok`` or ``error:<kind>`` where kind is one of

- ``encoding``: the line / value is not valid UTF-8 (or a binary value holds NUL bytes);
- ``json``: the JSONL line is not a JSON object;
- ``missing``: the record has no text field (or it is null);
- ``type``: the text field is not a string;
- ``empty``: the text is empty or only whitespace;
- ``too_large``: the text is longer than ``max_chars`` characters;
- ``budget``: protected text alone is over the budget (see ``allow_over_budget``);
- ``input``: tokensieve refused the text (NUL bytes, a lone surrogate, malformed JSON for
  format='json', ...);
- ``internal``: an unexpected failure on this record (the message says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BudgetError, InputError, TokensieveError
from ..inputs import decode_text

DEFAULT_MAX_CHARS = 200_000
# role -> (default column name, Arrow type) per task; a prefix (column_prefix) goes in front
# of every name. The roles original_tokens / compressed_tokens feed the token totals.
TASK_COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "compress": {
        "text": ("compressed_text", "string"),
        "original_tokens": ("original_tokens", "int64"),
        "compressed_tokens": ("compressed_tokens", "int64"),
        "status": ("status", "string"),
        "error": ("error", "string"),
    },
    "score": {
        "original_tokens": ("tokens", "int64"),
        "surprisal_total": ("surprisal_total", "float64"),
        "surprisal_mean": ("surprisal_mean", "float64"),
        "perplexity": ("perplexity", "float64"),
        "status": ("status", "string"),
        "error": ("error", "string"),
    },
}
TASKS = tuple(TASK_COLUMNS)
OUTPUT_COLUMNS = {role: name for role, (name, _) in TASK_COLUMNS["compress"].items()}
# the options of tokensieve.compress that --task score uses (surprise's own)
SCORE_OPTIONS = ("model", "device")
WARMUP_TEXT = ("The river rose slowly through the night, and by morning the old stone bridge "
               "was under water. Villagers gathered on the hill to watch the current carry "
               "branches, fences and a small boat past the church.")


def output_columns(prefix: str = "", task: str = "compress") -> dict[str, str]:
    return {role: prefix + name for role, (name, _) in TASK_COLUMNS[task].items()}


def arrow_types(task: str = "compress") -> dict[str, str]:
    """role -> Arrow type name of the columns ``task`` adds."""
    return {role: kind for role, (_, kind) in TASK_COLUMNS[task].items()}


@dataclass
class WorkItem:
    """What a worker needs for one record: its position, the text, or the error that
    already decided its status (read error, missing field, empty, too large)."""

    pos: int
    text: str | None
    error_kind: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "text": self.text, "error_kind": self.error_kind,
                "error": self.error}


def classify(value: Any, field: str, max_chars: int, read_error: tuple[str, str] | None = None,
             ) -> tuple[str | None, tuple[str, str] | None]:
    """(text, None) for a record to compress, else (None, (kind, message))."""
    if read_error is not None:
        return None, read_error
    if value is None:
        return None, ("missing", f"no {field!r} field (or it is null)")
    try:  # the one check of user text: bytes decoded, no NUL, no lone surrogate
        value = decode_text(value, repr(field))
    except InputError as exc:  # undecodable bytes are an encoding error, as a line is
        return None, ("encoding" if isinstance(value, bytes | bytearray) else "input", str(exc))
    if not isinstance(value, str):
        return None, ("type", f"{field!r} is a {type(value).__name__}, not a string")
    if not value.strip():
        return None, ("empty", f"{field!r} is empty or only whitespace")
    if len(value) > max_chars:
        return None, ("too_large", f"{field!r} has {len(value)} characters, over the limit of "
                      f"{max_chars} (max_chars / --max-chars)")
    return value, None


def error_result(kind: str, message: str, task: str = "compress") -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(TASK_COLUMNS[task])
    out.update(status=f"error:{kind}", error=message)
    return out


class RecordCompressor:
    """Compresses work items with fixed options; the model loads once (:meth:`warm_up`)."""

    task = "compress"

    def __init__(self, options: dict[str, Any]):
        self.options = {**options, "progress": False}

    def warm_up(self) -> None:
        """Load the model and check the options on a fixed text: a bad option or a missing
        model fails here, before any record, instead of turning every record into an error."""
        from ..text import compress

        try:
            compress(WARMUP_TEXT, **self.options)
        except BudgetError:
            pass  # the options are fine; only this text's protected part is over budget

    def one(self, text: str | None, error_kind: str | None = None,
            error: str | None = None) -> dict[str, Any]:
        from ..text import compress

        if error_kind is not None or text is None:
            return error_result(error_kind or "missing", error or "no text")
        try:
            result = compress(text, **self.options)
        except BudgetError as exc:
            return error_result("budget", str(exc))
        except InputError as exc:
            return error_result("input", str(exc))
        except TokensieveError as exc:
            return error_result("internal", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # never lose a record to one bad input
            return error_result("internal", f"{type(exc).__name__}: {exc}")
        return {"text": result.text, "original_tokens": int(result.original_tokens),
                "compressed_tokens": int(result.compressed_tokens), "status": "ok",
                "error": None}

    def batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Results for work items given as dicts (pos, text, error_kind, error); each result
        carries its item's pos."""
        return [{"pos": it["pos"], **self.one(it["text"], it.get("error_kind"), it.get("error"))}
                for it in items]


class RecordScorer(RecordCompressor):
    """``--task score``: the surprisal of each record's text under the scoring model (as
    ``tokensieve inspect surprise``): token count, total and mean surprisal in nats, and
    perplexity. Only ``model`` and ``device`` apply."""

    task = "score"

    def __init__(self, options: dict[str, Any]):
        self.options = {k: v for k, v in options.items() if k in SCORE_OPTIONS and v is not None}

    def warm_up(self) -> None:
        self._score(WARMUP_TEXT)

    def _score(self, text: str):
        from ..inspect.surprise import surprise

        opts = dict(self.options)
        return surprise(text, opts.pop("model", "default"), progress=False, **opts)

    def one(self, text: str | None, error_kind: str | None = None,
            error: str | None = None) -> dict[str, Any]:
        if error_kind is not None or text is None:
            return error_result(error_kind or "missing", error or "no text", self.task)
        try:
            r = self._score(text)
        except InputError as exc:
            return error_result("input", str(exc), self.task)
        except Exception as exc:  # never lose a record to one bad input
            return error_result("internal", f"{type(exc).__name__}: {exc}", self.task)
        return {"original_tokens": len(r.tokens), "surprisal_total": float(r.total),
                "surprisal_mean": float(r.mean), "perplexity": float(r.perplexity),
                "status": "ok", "error": None}


def make_worker(task: str, options: dict[str, Any]) -> RecordCompressor:
    """The per-record worker of ``task`` ('compress' or 'score')."""
    return RecordScorer(options) if task == "score" else RecordCompressor(options)
