"""The README's Python examples run as written."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readme_python_block_runs(block, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS[block], f"README.md python block {block}", "exec"), {})
    assert out.getvalue().strip()


def test_readme_has_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert bash[0].startswith("bash scripts/setup.sh && .venv/bin/tokensieve compress")
    assert bash[1].startswith("bash scripts/setup.sh && .venv/bin/python -m pytest")
    assert os.path.exists(ROOT / "scripts" / "setup.sh")


SNIPPETS = re.findall(r"```py\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("block", range(len(SNIPPETS)))
def test_readme_snippets_compile(block):
    """```py blocks need a running service or an upstream API (the proxy example; the real
    openai client runs against a fake upstream in test_serve_proxy.py): they must at least
    be valid Python."""
    compile(SNIPPETS[block], f"README.md py snippet {block}", "exec")
