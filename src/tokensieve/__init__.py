"""tokensieve: find the informative tokens and drop or merge the rest."""

from .errors import BudgetError, InputError, ModelNotFoundError, TokensieveError, UsageError
from .text import CompressionResult, ScoredUnit, compress

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "CompressionResult",
    "InputError",
    "ModelNotFoundError",
    "ScoredUnit",
    "TokensieveError",
    "UsageError",
    "compress",
]
