"""The language-model probe (``Visual.probe``) and the ``probe`` method: the attention it
reads equals the model's own eager attention on the shortened sequence, it leaves nothing
behind, and the method keeps the blocks the probe scores highest."""

from __future__ import annotations

import pytest
import torch
from vlm_models import build

from tokensieve import vlm
from tokensieve.errors import UsageError
from tokensieve.vlm.layer_attention import language_model
from tokensieve.vlm.methods import Visual, VLMMethod, get_method
from tokensieve.vlm.probe import depth_layer


class Recorder(VLMMethod):
    """Calls the probe on ``idx`` and keeps the first ``count`` tokens."""

    name = "recorder"
    needs = frozenset({"probe", "text"})
    question_aware = True

    def __init__(self, idx, depth):
        self.idx, self.depth, self.seen = idx, depth, []

    def select(self, v):
        self.seen.append((v.probe(self.idx, self.depth), v.n))
        keep = torch.zeros(v.n, dtype=torch.bool)
        keep[:v.count] = True
        return keep


def _lm_call(model, inputs):
    """The input embeddings and position ids the language model gets unpruned."""
    lm = language_model(model)
    seen = {}

    def grab(_m, args, kwargs):
        seen.update(embeds=kwargs["inputs_embeds"], positions=kwargs.get("position_ids"))

    h = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        h.remove()
    return seen


@pytest.mark.parametrize("kind", ["llava_clip", "qwen2_vl", "idefics3"])
@torch.no_grad()
def test_probe_attention_equals_eager_attention_on_the_shortened_row(kind):
    tiny = build(kind, "eager")
    model = tiny.model
    inputs = tiny.row(tiny.inputs([(1, 3, 5)]), 0)
    ids = inputs["input_ids"][0]
    image_pos = (ids == 150).nonzero().flatten()          # IMAGE token id of vlm_models
    n = image_pos.numel() if not kind.startswith("idefics") else 16
    idx = torch.tensor([5, 0, 3, 9])                       # any order
    depth = 0.7
    rec = Recorder(idx, depth)
    with vlm.prune(model, rec, count=4):
        model(**inputs)
    got, n_seen = rec.seen[0]
    assert n_seen >= n
    # the oracle: the unpruned embeddings and positions, the image's other tokens removed
    call = _lm_call(model, inputs)
    cols = image_pos[:n_seen]                               # the first image (crop) seen
    keep = torch.ones(ids.shape[0], dtype=torch.bool)
    drop = torch.ones(n_seen, dtype=torch.bool)
    drop[idx] = False
    keep[cols[drop]] = False
    pos = call["positions"]
    if pos is None:
        pos = torch.arange(ids.shape[0])[None]
    pos = pos[..., keep]
    lm = language_model(model)
    out = lm(inputs_embeds=call["embeds"][:, keep], position_ids=pos, output_attentions=True)
    layer = depth_layer(depth, len(lm.layers))
    att = out.attentions[layer][0, :, -1].mean(0)           # head mean, last token
    short = keep.nonzero().flatten()
    where = torch.searchsorted(short, cols[idx])
    torch.testing.assert_close(got, att[where].float(), rtol=1e-4, atol=1e-6)
    assert not lm.layers[layer]._forward_pre_hooks           # the stop hook is gone


def _visual(count, probe, grid=(4, 4)):
    return Visual(features=torch.randn(16, 8), count=count, grid=grid,
                  text=torch.randn(2, 8), probe=probe)


def test_probe_keeps_the_block_of_the_highest_probed_token():
    calls = []

    def probe(idx, depth):
        calls.append((idx.tolist(), depth))
        return torch.tensor([0.1, 0.2, 0.1, 0.6])[: len(idx)]   # probed 0, 2, 8, 10

    method = get_method("probe:stride=2,depth=0.5")
    keep = method.select(_visual(4, probe))
    assert calls == [([0, 2, 8, 10], 0.5)]
    assert keep.nonzero().flatten().tolist() == [10, 11, 14, 15]   # the block of token 10
    keep = method.select(_visual(6, probe))                          # then token 2's block
    assert set(keep.nonzero().flatten().tolist()) == {10, 11, 14, 15, 2, 3}


def test_share_spreads_the_rest_and_the_budget_is_exact():
    def probe(idx, depth):
        return torch.arange(len(idx), dtype=torch.float)            # token 10's block first

    for count in range(1, 17):
        keep = get_method("probe:share=0.5").select(_visual(count, probe))
        assert int(keep.sum()) == count
    keep = get_method("probe:share=0.5").select(_visual(4, probe))
    assert {10, 11} <= set(keep.nonzero().flatten().tolist())        # 2 by the probe
    no_grid = get_method("probe").select(_visual(3, probe, grid=None))
    assert no_grid.nonzero().flatten().tolist() == [12, 13, 14]      # the last run of 4


@pytest.mark.parametrize("spec", ["probe:depth=1.5", "probe:stride=0", "probe:stride=1.5",
                                  "probe:share=2", "probe:spread=far"])
def test_bad_settings_are_one_line_errors(spec):
    with pytest.raises(UsageError) as info:
        get_method(spec)
    assert "\n" not in str(info.value)


def test_without_a_probe_or_a_question_it_is_refused():
    with pytest.raises(UsageError, match="probe"):
        get_method("probe").select(_visual(4, None))
    tiny = build("llava_clip")
    with pytest.raises(UsageError, match="question"):
        with vlm.prune(tiny.model, "probe", keep=0.5, question_aware=False):
            pass


@torch.no_grad()
def test_probe_leaves_the_cache_and_the_output_as_pruning_alone_would():
    """The probe's forward touches no cache: generate under ``probe`` equals generate under a
    fixed method that keeps the same tokens."""
    tiny = build("llava_clip")
    model = tiny.model
    inputs = tiny.inputs([(1, 3, 5), (1, 2, 6)])
    with vlm.prune(model, "probe", count=5) as r:
        a = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    kept = [rec.kept for rec in r.last]

    class Fixed(VLMMethod):
        name = "fixed"

        def __init__(self):
            self.i = 0

        def select(self, v):
            keep = torch.zeros(v.n, dtype=torch.bool)
            keep[kept[self.i]] = True
            self.i += 1
            return keep

    with vlm.prune(model, Fixed(), count=5):
        b = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(a, b)


@torch.no_grad()
def test_probe_keeps_the_same_tokens_on_one_and_two_threads():
    tiny = build("llava_clip")
    inputs = tiny.inputs([(1, 3, 5), (1, 2, 6)])
    before = torch.get_num_threads()
    kept = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with vlm.prune(tiny.model, "probe", count=5) as r:
                tiny.model(**inputs)
            kept.append([rec.kept.tolist() for rec in r.last])
    finally:
        torch.set_num_threads(before)
    assert kept[0] == kept[1] and all(len(k) == 5 for k in kept[0])
