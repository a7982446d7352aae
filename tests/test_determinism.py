"""Same input, same output: one rounding rule turns a keep fraction into a count everywhere,
and merges accumulate in float32."""

from __future__ import annotations

import pytest
import torch

from tokensieve import kv, vision
from tokensieve.engine import Budget, keep_count
from tokensieve.engine.merge import combine
from tokensieve.kv.plan import Plan

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
