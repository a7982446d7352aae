"""Errors a user can act on. Each message names the problem and the fix."""

from __future__ import annotations


class TokensieveError(Exception):
    """Base class: a problem the user can fix; the CLI prints it on one line (exit 1)."""


class InputError(TokensieveError, ValueError):
    """Bad input: empty text, invalid UTF-8, malformed JSON, a ratio out of range ..."""


class UsageError(InputError):
    """A bad option or combination of options (the CLI exits with 2)."""


class BudgetError(TokensieveError):
    """The budget cannot be met, e.g. protected text alone is larger than the budget."""


class ModelNotFoundError(TokensieveError):
    """A model is not installed locally; tokensieve never downloads one."""
