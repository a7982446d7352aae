"""What every verb shares: exit codes, the parser that fails in one line, the --keep type."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def fraction(value: str) -> float:
    """--keep FRACTION; a clear word for the old --keep TEXT."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--keep takes the fraction of tokens to keep (e.g. 0.33), got {value!r}; to "
            f"protect a literal string use --keep-text {value!r}") from None
