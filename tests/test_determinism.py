"""Same input, same output: scores are ranked after the engine's quantise (ties by position)
in every place, one rounding rule turns a keep fraction into a count everywhere, merges
accumulate in float32, and compress gives the same text on 1 or 2 torch threads and on the
local or the Ray engine (real documents: prose of the Python reference manual, which ships
with CPython as pydoc_data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tokensieve import compress, kv, vision
from tokensieve.engine import (
    Budget,
    keep_count,
    quantise,
    ranked,
    select_top_k,
    select_under_budget,
)
from tokensieve.engine.merge import combine
from tokensieve.kv.plan import Plan
from tokensieve.text import scorers as text_scorers

ROOT = Path(__file__).resolve().parents[1]
# a float32 score and the same sum taken in another order: a few ulps apart
F32 = np.float32(7.123456)
F32_NOISY = np.nextafter(np.nextafter(F32, np.float32(8)), np.float32(8))

# ---------------------------------------------------------------- quantise and ranking


def test_quantise_rounds_to_16_significant_bits_and_keeps_inf_and_nan():
    x = np.array([0.1 + 0.2, 0.3, -(0.1 + 0.2), 1 + 2.0**-17, 1 + 2.0**-15, 0.0, np.inf,
                  -np.inf, np.nan])
    q = quantise(x)
    assert q.dtype == np.float64
    assert q[0] == q[1] == -q[2]                 # equal up to float noise -> equal
    assert q[3] == 1.0 and q[4] == 1 + 2.0**-15  # below half a step / one step exactly
    assert q[5] == 0 and q[6] == np.inf and q[7] == -np.inf and np.isnan(q[8])
    assert np.array_equal(quantise(q), q, equal_nan=True)  # idempotent
    t = torch.tensor([float(F32), float(F32_NOISY)], dtype=torch.float32)
    qt = quantise(t)
    assert qt.dtype == torch.float32 and qt[0] == qt[1]
    assert quantise(t.double()).dtype == torch.float64
    assert torch.equal(quantise(t.to(torch.bfloat16)), t.to(torch.bfloat16).float())


def test_ranked_ties_go_by_position_and_nan_last():
    assert ranked(np.array([0.3, np.nan, 0.1 + 0.2, 0.5])).tolist() == [3, 0, 2, 1]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_top_k_float_noise_does_not_pick_the_later_item(kind):
    # the later score is larger by float noise only: today it wins, it must tie (earlier)
    s = np.array([10.0, F32, F32_NOISY], dtype=np.float32)
    scores = torch.from_numpy(s) if kind == "torch" else s
    keep = select_top_k(scores, 2)
    assert np.asarray(keep).tolist() == [True, True, False]
    late = select_top_k(scores, 2, prefer="late")
    assert np.asarray(late).tolist() == [True, False, True]


def test_under_budget_float_noise_does_not_pick_the_later_item():
    keep = select_under_budget(np.array([0.3, 0.1 + 0.2, 0.2]), np.ones(3), 1)
    assert keep.tolist() == [True, False, False]


class _NoisyScorer(text_scorers.Scorer):
    """Units of sentence 0 score highest; those of sentences 1 and 2 score the same up to
    float noise, the later ones a little higher."""

    name = "noisy-test"

    def score(self, spans, level, ctx):
        beta, gamma = ctx.text.index("Beta"), ctx.text.index("Gamma")
        return np.array([2.0 if a < beta else 0.3 if a < gamma else 0.1 + 0.2
                         for a, _ in spans])


@pytest.mark.parametrize("granularity", ["sentence", "word"])
def test_compress_float_noise_does_not_pick_the_later_unit(monkeypatch, granularity):
    monkeypatch.setitem(text_scorers.SCORERS, "noisy-test", _NoisyScorer)
    text = "Alpha one two three. Beta four five six. Gamma seven eight nine."
    r = compress(text, keep=0.67, method="noisy-test", granularity=granularity,
                 tokenizer=str.split)
    assert r.target_tokens == 8
    assert r.text == "Alpha one two three. Beta four five six."
    score = {u.text.strip(" ."): u.score for u in r.scores}
    assert score["four"] == score["seven"] < score["one"]  # reported as ranked


# ---------------------------------------------------------------- one rounding rule


def test_keep_count_is_floor_of_the_decimal_at_least_one():
    assert keep_count(0.5, 7) == 3
    assert keep_count(0.29, 100) == 29 and keep_count(1 / 3, 9) == 3
    assert keep_count(0.4875, 40) == 19
    assert keep_count(0.1, 5) == 1 and keep_count(1e-9, 10**6) == 1
    assert keep_count(0, 5) == 0 and keep_count(0.5, 0) == 0 and keep_count(1.0, 7) == 7


@pytest.mark.parametrize("keep,total", [(0.5, 7), (0.5, 43), (0.4875, 40), (0.1, 9)])
def test_text_and_kv_count_a_fraction_the_same_way(keep, total):
    want = keep_count(keep, total)
    assert Budget(keep=keep).target(total) == want
    assert Plan.build("default", keep=keep).budget(total) == want


def test_kv_stores_the_floor_of_half_an_odd_context():
    from kv_models import random_ids, tiny_model

    model = tiny_model("llama")
    with torch.no_grad(), kv.compress(model, "snapkv", keep=0.5) as s:
        model(random_ids(43))
    assert {layer.keys.shape[-2] for layer in s.last_cache.layers} == {21}  # not 22


def test_vision_counts_a_fraction_as_text_does():
    from vision_models import build, tokens

    model, prefix = build("dinov2")
    x = torch.randn(1, 3, 40, 64, generator=torch.Generator().manual_seed(1))  # 5 x 8 = 40
    with vision.reduce(model, "default", keep=0.4875, at=[0]) as r:
        out = tokens(model, x)
    assert out.shape[1] == prefix + Budget(keep=0.4875).target(40) == prefix + 19
    assert r.last.tokens[-1] == prefix + 19


# ---------------------------------------------------------------- merge accumulates in fp32


def test_merge_of_half_precision_tokens_accumulates_in_float32():
    x = torch.full((1, 2, 3), 40000.0, dtype=torch.float16)  # the sum overflows float16
    y, mass = combine(x, torch.zeros(1, 2, dtype=torch.long), 1)
    assert y.dtype == mass.dtype == torch.float16
    assert torch.equal(y, torch.full((1, 1, 3), 40000.0, dtype=torch.float16))
    # bfloat16 stops counting at 256 (256 + 1 rounds back to 256): 300 ones weigh 300
    ones = torch.ones(1, 300, 2, dtype=torch.bfloat16)
    ones[0, :150] = 3.0
    y, mass = combine(ones, torch.zeros(1, 300, dtype=torch.long), 1)
    assert float(mass[0, 0]) == 300 and float(y[0, 0, 0]) == 2.0
    # a slot of one token is that token, bit for bit
    z = torch.randn(2, 5, 4).to(torch.float16)
    y, _ = combine(z, torch.arange(5).expand(2, 5), 5, torch.rand(2, 5))
    assert torch.equal(y, z)


# ---------------------------------------------------------------- real documents


def real_documents(n: int = 40, limit: int = 600) -> list[str]:
    """``n`` multi-paragraph documents: the first prose paragraphs (no code, no headings) of
    the Python reference manual's topics, which ship with CPython (pydoc_data)."""
    topics = pytest.importorskip("pydoc_data.topics").topics
    docs = []
    for key in sorted(topics):
        paras = []
        for block in topics[key].split("\n\n"):
            lines = [ln for ln in block.split("\n") if ln.strip()]
            if not lines or any(ln.startswith(" ") for ln in lines):
                continue
            para = " ".join(ln.strip() for ln in lines)
            if len(para.split()) >= 12:
                paras.append(para)
        doc: list[str] = []
        for para in paras:
            if doc and sum(map(len, doc)) + len(para) > limit:
                break
            doc.append(para)
        if len(doc) >= 2:
            docs.append("\n\n".join(doc))
    if len(docs) < n:
        pytest.skip(f"pydoc_data holds only {len(docs)} multi-paragraph topics")
    return docs[:n]


_RUN = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from tokensieve import compress
docs = json.load(sys.stdin)
print(json.dumps([compress(d, keep=0.5, progress=False).text for d in docs]))
"""


def _start(docs: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": "passive", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(threads)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdin.write(json.dumps(docs))
    proc.stdin.close()
    return proc


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return real_documents()


@pytest.fixture(scope="module")
def by_threads(documents) -> dict[int, list[str]]:
    """compress on 1 and on 2 torch threads, each in a fresh process (run side by side)."""
    procs = {n: _start(documents, n) for n in (1, 2)}
    out = {}
    for n, proc in procs.items():
        stdout = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
        out[n] = json.loads(stdout)
    return out


@pytest.mark.model
def test_one_or_two_threads_give_the_same_output(documents, by_threads):
    one, two = by_threads[1], by_threads[2]
    assert len(one) == len(two) == 40
    assert all(0 < len(t) < len(d) for t, d in zip(one, documents, strict=True))
    differ = [i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b]
    assert not differ, f"{len(differ)} of 40 documents differ between 1 and 2 threads"


@pytest.mark.model
@pytest.mark.ray
def test_local_and_ray_engines_give_the_same_output(documents, by_threads, tmp_path):
    """The Ray engine (2 actors of 1 torch thread) against the local one on 2 threads (the
    local engine runs compress record by record in this process: the 2-thread run above)."""
    ray = pytest.importorskip("ray")
    from tokensieve.dataset import compress_dataset

    src, out = tmp_path / "in.jsonl", tmp_path / "ray.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": d}) + "\n"
                           for i, d in enumerate(documents)), encoding="utf-8")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False, configure_logging=False)
    try:
        compress_dataset(str(src), str(out), engine="ray", concurrency=2, threads=1,
                         keep=0.5, batch_size=10, progress=False)
    finally:
        ray.shutdown()
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 40
    differ = [i for i, (r, t) in enumerate(zip(rows, by_threads[2], strict=True))
              if r["compressed_text"] != t]
    assert not differ, f"{len(differ)} of 40 documents differ between local and Ray"
