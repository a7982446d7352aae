"""What every benchmark's ``main`` shares: one-line errors with exit codes, the "wrote" line,
and reading an earlier results file to merge."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import TokensieveError, UsageError


def run_cli(work: Callable[[], list[Path]]) -> int:
    """Run ``work`` (returns the files it wrote): 0 and a "wrote ..." line, or the error on
    one line of stderr with 2 (bad usage) or 1 (any other tokensieve error)."""
    try:
        files = work()
    except UsageError as exc:
        print(f"tokensieve: error: {exc}", file=sys.stderr)
        return 2
    except TokensieveError as exc:
        print(f"tokensieve: error: {exc}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def read_results(path: Path, flag: str = "--merge") -> dict:
    """An earlier ``results.json`` (for ``flag``), or a one-line usage error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{flag} {path}: not a results file ({exc}).") from None


def check_common(args) -> None:
    """The checks every training benchmark's ``--threads`` and ``--merge`` need."""
    if args.threads < 1:
        raise UsageError(f"threads must be >= 1, got {args.threads}.")
    if args.merge is not None and not args.merge.is_file():
        raise UsageError(f"--merge {args.merge}: no such results file.")


def write_files(results: dict, out: Path, markdown, picture) -> list[Path]:
    """``results.json``, ``report.md`` (``markdown(results)``) and the picture
    ``picture(results, out)`` draws, in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "report.md"]
    files[0].write_text(json.dumps(results, indent=1))
    files[1].write_text(markdown(results))
    files.append(picture(results, out))
    return files
