"""tokensieve.stack: prompt compression then KV compression within one memory budget."""

import math

import pytest

from tokensieve import stack
from tokensieve.errors import UsageError


@pytest.mark.parametrize("memory", [1.0, 0.5, 0.25, 0.125, 0.01])
@pytest.mark.parametrize("split", [0.0, 0.25, 0.5, 1.0])
def test_stage_keeps_multiply_to_the_memory(memory, split):
    p, k = stage_keeps = stack.stage_keeps(memory, split)
    assert math.isclose(p * k, memory) and 0 < p <= 1 and 0 < k <= 1
    assert stage_keeps == ((1.0, memory) if split == 0 else (memory, 1.0) if split == 1
                           else stage_keeps)
    assert math.isclose(p, memory ** split)


@pytest.mark.parametrize("memory, split, what", [
    (0.0, 0.5, "memory"), (1.5, 0.5, "memory"), (0.25, -0.1, "split"), (0.25, 1.2, "split"),
    (0.25, float("nan"), "split"), (0.25, True, "split")])
def test_bad_budgets_are_one_clear_error(memory, split, what):
    with pytest.raises(UsageError, match=what):
        stack.stage_keeps(memory, split)


@pytest.mark.model
@pytest.mark.parametrize("split", [0.0, 0.5, 1.0])
def test_answer_stays_within_memory(report_text, split):
    from tokensieve.models import load_causal_lm

    lm = load_causal_lm("default")
    out = stack.answer(lm.model, lm.tokenizer, report_text, "What was the Q3 revenue?",
                       memory=0.25, split=split, max_new_tokens=4)
    assert out.answer.strip()
    assert 0.2 <= out.memory <= 0.25 + 1e-9   # the chat template's tokens are paid for too
    if split == 0:
        assert out.compressed_tokens == out.prompt_tokens and out.kv_keep == 0.25
    if split == 1:
        assert out.compressed_tokens < 0.3 * out.prompt_tokens and out.kv_keep == 1.0
