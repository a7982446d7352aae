"""User regexes (protect): bounded before they are compiled, kept out of the regex module's
process-wide caches, and run under one time limit over exactly the text compress protects."""

import json
import os
import subprocess
import sys
import time

import pytest
import regex

from tokensieve.errors import InputError, UsageError
from tokensieve.text import compress
from tokensieve.text.protect import MAX_PATTERN_CHARS, MAX_PATTERN_SIZE, protected_spans

# runs the patterns in a child whose address space may grow by 200 MiB only, so that the
# unbounded compile of the old code fails there (MemoryError) instead of on this machine
BOMB_CHILD = r"""
import json, resource, sys, time
from tokensieve.text.protect import protected_spans
status = open("/proc/self/status").read().split("VmSize:")[1]
cap = int(status.split()[0]) * 1024 + 200 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = []
for pattern in sys.argv[1:]:
    t = time.perf_counter()
    try:
        protected_spans("aaaa", [pattern])
        error, message = None, ""
    except MemoryError:
        error, message = "MemoryError", ""
    except Exception as exc:
        error, message = type(exc).__name__, str(exc)
    out.append({"error": error, "message": message, "ms": (time.perf_counter() - t) * 1000})
out.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""

BOMBS = ["((a{1000}){1000}){1000}",  # 23 bytes: 2.4 GB in 1.75 s before
         "(?:X{1000}){1000}",        # +260 MB, and it stayed in the regex cache
         "a{100000}", "(?:[ab]{100}){200}", "(?:ab|cd{50}){0,300}"]
RECURSIVE = ["(?R)?a", "((?2)?)((?1)?)b"]  # matching grew 0.8-1 GB within a 1 s time limit


def test_nested_repeats_and_recursion_are_refused_before_compiling():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", BOMB_CHILD, *BOMBS, *RECURSIVE],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    *results, max_rss_mb = json.loads(run.stdout)
    for pattern, r in zip(BOMBS + RECURSIVE, results, strict=True):
        assert r["error"] == "UsageError", (pattern, r)
        if pattern in BOMBS:
            assert f"{MAX_PATTERN_SIZE:,}" in r["message"] and pattern in r["message"]
        else:
            assert "recursive protect patterns" in r["message"]
        assert r["ms"] < 100, (pattern, r["ms"])
    print(f"refused in {max(r['ms'] for r in results):.2f} ms at most; child max RSS "
          f"{max_rss_mb:.0f} MB")


def test_long_patterns_are_refused_with_the_limit():
    with pytest.raises(UsageError, match=f"over the limit of {MAX_PATTERN_CHARS}"):
        protected_spans("abc", ["a" * (MAX_PATTERN_CHARS + 1)])


def test_ordinary_patterns_still_work():
    text = "Ticket ORDER-123456 at 10:30, mail a.b@example.com, Zürich Ü1."
    cases = {r"ORDER-\d{4,8}": ["ORDER-123456"],
             r"\w{1,64}@\w{1,64}\.\w{2,10}": ["b@example.com"],
             r"(?x) \d{2} : \d{2}  # a time": ["10:30"],
             r"\p{Lu}\d": ["Ü1"], r"[,{}]{1,3}": [",", ","],
             "a" * MAX_PATTERN_CHARS: []}
    for pattern, found in cases.items():
        assert [text[s:e] for s, e in protected_spans(text, [pattern])] == found, pattern


def test_user_patterns_stay_out_of_the_regex_module_caches():
    caches = regex._main._cache, regex._main._locale_sensitive
    before = [len(c) for c in caches]
    for i in range(30):
        assert protected_spans(f"x id{i:03d} y", [rf"id{i:03d}"]) == [(2, 7)]
    assert [len(c) for c in caches] == before


DOCS = ["a" * 12] * 3 + ["a" * 11 + "!"]
SLOW = r"(?:a|aa|\n)+$"  # quick on each document, exponential over the documents joined


def test_the_time_limit_covers_the_text_compress_protects():
    for doc in DOCS:  # each document alone passes the limit, as the old check timed them
        protected_spans(doc, [SLOW], timeout=0.5)
    t = time.perf_counter()
    with pytest.raises(InputError, match=r"took longer than 0.5 s"):
        compress(DOCS, keep=0.5, protect=[SLOW], protect_timeout=0.5, tokenizer=str.split,
                 method="wordfreq")
    assert time.perf_counter() - t < 10
