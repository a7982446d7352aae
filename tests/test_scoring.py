"""The one surprisal scorer: what ``inspect surprise`` shows is what text's surprisal method
and kv's ``information`` policy rank, for the same text (tiny random Llama, SmolLM2's
tokenizer), with and without a BOS token in front."""

import numpy as np
import pytest
import torch

from tokensieve import inspect as ins
from tokensieve import kv
from tokensieve.scoring.segment import find_words
from tokensieve.text.scorers import ScoringContext, SurprisalScorer

TEXT = ("The invoice INV-20931 was paid on 14 March by Dana Whitfield. The shipment left "
        "the depot at Rotterdam two days later, and nobody asked about it again.")


class NoBos:
    """The same tokenizer, but without a BOS token (like GPT-2's or Qwen's)."""

    bos_token_id = None

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _text_ranks(model, tok, spans):
    """Per token and per word, what text's 'surprisal' method ranks."""
    ctx = ScoringContext(TEXT)
    ctx.causal_lm = lambda: type("Loaded", (), {"model": model, "tokenizer": tok})()
    return ctx.surprisal(False).surprisal, SurprisalScorer().score(spans, "word", ctx)


def _kv_surprisal(model, ids):
    """The per-token surprisal kv's information policy ranks, for one prefill of ``ids``."""
    with kv.compress(model, "information", keep=0.5) as session, torch.no_grad():
        model(torch.tensor([ids]), use_cache=True)
    return session.last_cache.surprisal[0].numpy()


@pytest.mark.parametrize("bos", [True, False])
def test_inspect_shows_what_text_and_kv_rank(tiny, bos):
    model, tok = tiny
    tok = tok if bos else NoBos(tok)
    shown = ins.surprise(TEXT, (model, tok))
    tokens = np.array([t.surprisal for t in shown.tokens])
    words = np.array([w.surprisal for w in shown.words])
    spans = np.array(find_words(TEXT), dtype=np.int64)
    ranked_tokens, ranked_words = _text_ranks(model, tok, spans)
    np.testing.assert_allclose(ranked_tokens, tokens, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ranked_words, words, rtol=0, atol=1e-5)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    if bos:   # the context the kv policy sees starts with the BOS, as text's windows do
        ids = [tok.bos_token_id, *ids]
    kv_tokens = _kv_surprisal(model, ids)[1 if bos else 0:]
    np.testing.assert_allclose(kv_tokens, tokens, rtol=0, atol=1e-5)
    if not bos:   # the one first-token rule: nothing predicts it, it gets the row's highest
        assert tokens[0] == pytest.approx(tokens[1:].max())
        assert shown.notes and "highest surprisal" in shown.notes[0]


def test_a_model_whose_logits_are_not_its_head_on_its_hidden_states_is_refused(tiny):
    """Surprisal is read through the output head from the final hidden states; a model that
    scales its logits afterwards (Cohere's logit_scale, Granite's logits_scaling) would be
    scored wrongly, so it is refused in one line instead."""
    from tokensieve.errors import UsageError
    from tokensieve.scoring.surprisal import text_surprisal

    model, tok = tiny

    def scale(module, args, output):
        output.logits = output.logits * 4.0
        return output

    handle = model.register_forward_hook(scale)
    try:
        with pytest.raises(UsageError, match="logits are not its output head") as exc:
            text_surprisal(model, tok, TEXT, progress=False)
    finally:
        handle.remove()
    assert "\n" not in str(exc.value)
