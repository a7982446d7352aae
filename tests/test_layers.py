"""Imports run one way, down: the top (cli, serve, dataset, adapters, bench) may import the
places (text, kv, vision, inspect, vlm, train), which may import the bottom (engine, the
shared scoring, assets, models, spans, inputs, errors); never the other way, a place never
imports another place's internals (only its package, ``tokensieve.text``), and no two
modules import each other, directly or around a circle. Every import counts, module-level or
inside a function: the source is parsed, nothing is imported. docs/architecture.md draws
the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tokensieve"

# top-level part of the package -> layer (higher imports lower); a new part must be placed
TOP, PLACE, BOTTOM = 2, 1, 0
LAYER = {
    "": TOP, "__main__": TOP,  # the package's facade (tokensieve.compress) and python -m
    "cli": TOP, "serve": TOP, "dataset": TOP, "adapters": TOP, "bench": TOP, "stack": TOP,
    "text": PLACE, "kv": PLACE, "vision": PLACE, "inspect": PLACE, "vlm": PLACE, "train": PLACE,
    "engine": BOTTOM, "scoring": BOTTOM, "assets": BOTTOM, "models": BOTTOM, "spans": BOTTOM,
    "inputs": BOTTOM, "errors": BOTTOM,
}
NAMES = {TOP: "top", PLACE: "place", BOTTOM: "bottom"}

# Violations still in the code, each to be removed by the change named; the test fails when
# one of them is gone (take it off the list), so the lists only shrink.
ALLOWED: dict[tuple[str, str], str] = {
}
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _known(name: str, known: dict[str, Path]) -> str:
    """The module ``name`` names: itself, else its longest known prefix."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = ".".join(filter(None, [base, node.module]))
            else:
                base = node.module or ""
            # `from . import x`: the submodule x when there is one, else the module itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.add(_known(target, known))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def part(module: str) -> str:
    """The top-level part a module belongs to: 'text' for tokensieve.text.surprisal."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_package_api(module: str, known: dict[str, Path]) -> bool:
    """The package of a place itself (tokensieve.kv), which is its public API."""
    return module.count(".") == 1 and known[module].name == "__init__.py"


def upward(edges: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """(importer, imported) -> why it climbs or reaches into another place."""
    known = modules()
    out = {}
    for a, targets in edges.items():
        for b in targets:
            la, lb = LAYER[part(a)], LAYER[part(b)]
            if lb > la:
                out[(a, b)] = f"a {NAMES[la]} module imports a {NAMES[lb]} one"
            elif la == lb == PLACE and part(a) != part(b) and not is_package_api(b, known):
                out[(a, b)] = f"a place imports the internals of another ({part(b)})"
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


# ----------------------------------------------------------------------------------- tests


def test_every_part_has_a_layer():
    parts = {part(m) for m in modules()}
    assert parts - set(LAYER) == set(), "place the new part in LAYER (top, place or bottom)"


def test_no_import_climbs_up():
    found = upward(graph())
    new = {edge: why for edge, why in found.items() if edge not in ALLOWED}
    assert not new, "imports that climb up (import down instead, or move the shared code " \
        "below both):\n" + "\n".join(f"  {a} -> {b}: {why}" for (a, b), why in sorted(new.items()))
    gone = set(ALLOWED) - set(found)
    assert not gone, "no longer violated, remove from ALLOWED:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(gone))


def test_no_import_cycle():
    found = {tuple(c) for c in cycles(graph())}
    new = sorted(found - set(ALLOWED_CYCLES))
    assert not new, "import cycles (move what both need into a module below them):\n" + \
        "\n".join("  " + " <-> ".join(c) for c in new)
    gone = set(ALLOWED_CYCLES) - found
    assert not gone, "no longer a cycle, remove from ALLOWED_CYCLES:\n" + "\n".join(
        "  " + " <-> ".join(c) for c in sorted(gone))


def test_library_holds_no_argparse_and_never_imports_the_cli():
    edges = graph()
    for name, path in modules().items():
        if LAYER[part(name)] == TOP:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "argparse" not in used, f"{name} imports argparse: its command line goes in cli/"
        assert not any(part(b) == "cli" for b in edges[name]), f"{name} imports the CLI"


# ------------------------------------------------------------------- the checker itself


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A small fake package under tmp_path/src, as SRC."""
    root = tmp_path / "src" / PACKAGE

    def write(files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    monkeypatch.setattr(f"{__name__}.SRC", tmp_path / "src")
    return write


def test_checker_sees_function_level_relative_and_package_imports(tree):
    tree({
        "__init__.py": "from .text import compress\n",
        "errors.py": "",
        "bench.py": "",
        "text/__init__.py": "from .compressor import compress\n",
        "text/compressor.py": "from ..errors import X\n\ndef f():\n    from .. import bench\n",
        "kv/__init__.py": "",
        "kv/hooks.py": "import tokensieve.text.compressor as c\nfrom ..text import compress\n",
        "cli.py": "from tokensieve import kv\nfrom .text import compressor\n",
    })
    edges = graph()
    assert edges["tokensieve.text.compressor"] == {"tokensieve.errors", "tokensieve.bench"}
    assert edges["tokensieve.kv.hooks"] == {"tokensieve.text.compressor", "tokensieve.text"}
    assert edges["tokensieve.cli"] == {"tokensieve.kv", "tokensieve.text.compressor"}
    assert set(upward(edges)) == {("tokensieve.text.compressor", "tokensieve.bench"),
                                  ("tokensieve.kv.hooks", "tokensieve.text.compressor")}
    assert cycles(edges) == []


def test_checker_finds_a_cycle_through_several_modules(tree):
    tree({
        "__init__.py": "",
        "inspect/__init__.py": "",
        "inspect/a.py": "from . import b\n",
        "inspect/b.py": "def f():\n    from .c import g\n",
        "inspect/c.py": "from .a import x\n",
        "inspect/d.py": "from .a import x\n",
    })
    assert cycles(graph()) == [["tokensieve.inspect.a", "tokensieve.inspect.b",
                                "tokensieve.inspect.c"]]
