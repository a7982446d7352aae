"""The analytic FLOP count against a hand count for a tiny Llama-style config."""

import pytest
from transformers import LlamaConfig

from tokensieve.errors import UsageError
from tokensieve.train import ModelShape, step_flops

# hidden 8, intermediate 16, 2 layers, 2 heads of width 4, 1 kv head, vocab 10
CONFIG = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, vocab_size=10)


def test_step_flops_equal_a_hand_count():
    # per token per layer (one multiply-add = 2 FLOPs):
    #   q 2*8*8 = 128, k 2*8*4 = 64, v 2*8*4 = 64, o 2*8*8 = 128          -> 384
    #   gate 2*8*16 = 256, up 256, down 2*16*8 = 256                      -> 768
    #   together 1152
    # attention over a causal sequence of 3: positions see 1 + 2 + 3 = 6 keys;
    #   per key and head: q.k 2*4 = 8, p.v 2*4 = 8 -> 16; 2 heads -> 32; 6 keys -> 192
    # one sequence of 3, per layer: 3*1152 + 192 = 3648; 2 layers -> 7296; batch 2 -> 14592
    # head per row: 2*8*10 = 160
    s = step_flops(ModelShape.from_config(CONFIG), batch=2, seq_len=3, head_rows=4,
                   scored_rows=5)
    assert s.body_forward == 14592
    assert s.body_backward == 29184            # 2 x forward
    assert s.head_forward == 640               # 4 rows x 160
    assert s.head_backward == 1280             # 2 x 640
    assert s.scoring == 800                    # 5 rows x 160, no backward
    assert s.reference == 0
    assert s.total == 14592 + 29184 + 640 + 1280 + 800 == 46496
    assert s.as_dict()["total"] == 46496


def test_reference_forward_is_counted():
    # a 1-layer reference of the same widths: 3*1152 + 192 = 3648 per sequence, x 2 = 7296,
    # plus its head on 5 rows: 5 x 160 = 800
    ref = ModelShape(hidden=8, intermediate=16, layers=1, heads=2, kv_heads=1, vocab=10)
    s = step_flops(ModelShape.from_config(CONFIG), batch=2, seq_len=3, head_rows=4,
                   reference=ref, reference_rows=5)
    assert s.reference == 7296 + 800
    assert s.total == 14592 + 29184 + 640 + 1280 + 8096


def test_bad_shape():
    with pytest.raises(UsageError, match="layers"):
        ModelShape(hidden=8, intermediate=16, layers=0, heads=2, kv_heads=1, vocab=10)
