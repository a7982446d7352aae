"""Same input, same output: merges accumulate in float32."""

from __future__ import annotations

import torch

from tokensieve.engine.merge import combine

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
