"""``tokensieve models``: the installed models."""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK


def run(args: argparse.Namespace) -> int:
    from ..models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "status", "path")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["status"], row["path"])
    Console().print(table)
    return EXIT_OK


def add(sub) -> None:
    m = sub.add_parser("models", help="list the installed models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run)
