"""Issue 8, text side: device option, surprisal without a KV cache, linear word-to-token
mapping, whitespace runs and oversized units, markdown code blocks, and the pipeline module
shared by the text and JSON paths. Each test failed before its fix."""

from __future__ import annotations

import ast
import inspect
import re
import time
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import TOKENIZERS, texts, ws_tokenizer

from tokensieve import BudgetError, UsageError, compress, models
from tokensieve.scoring.segment import segment
from tokensieve.text.assemble import assemble, gap_tail, gap_tails
from tokensieve.text.counting import TokenCounter
from tokensieve.text.units import token_units, word_units

TEXT_DIR = Path(__file__).parent.parent / "src" / "tokensieve" / "text"
REPORTED = "\t\n" * 500 + "Revenue was 12.5 million.\n"
SHORT = ("The committee met on Tuesday. Revenue grew 12% to 48.2 million. Costs were flat. "
         "The board approved the plan and adjourned early.")


@pytest.fixture(scope="module")
def smol_tokenizer():
    """Only the embedded SmolLM2's tokenizer (cheap: no weights are loaded)."""
    return models.load_tokenizer("default")


# ---------------------------------------------------------------- 1. device


def test_compress_runs_on_the_cpu_device():
    a = compress(SHORT, keep=0.5, method="random", tokenizer=ws_tokenizer, device="cpu")
    b = compress(SHORT, keep=0.5, method="random", tokenizer=ws_tokenizer)
    assert a.text == b.text and a.compressed_tokens <= a.target_tokens
    assert compress(SHORT, keep=0.5, method="random", tokenizer=ws_tokenizer,
                    device="auto").text == a.text


@pytest.mark.parametrize("device, message", [
    ("cuda", "no usable CUDA GPU.*device='cpu'"),
    ("cuda:0", "no usable CUDA GPU.*device='cpu'"),
    ("mps", "MPS.*device='cpu'"),
    ("gpu", "unknown device 'gpu'; use one of: cpu, cuda, cuda:N, mps, auto"),
    ("cuda:x", "unknown device"),
    (3, "device must be a string"),
])
def test_a_device_this_machine_lacks_is_a_clear_usage_error(device, message):
    if device in ("cuda", "cuda:0") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(UsageError, match=message):
        compress(SHORT, keep=0.5, method="random", tokenizer=ws_tokenizer, device=device)
    if isinstance(device, str):  # the loaders say the same, before loading anything
        with pytest.raises(UsageError, match=message):
            models.load_causal_lm("./no/such/folder", device=device)


def test_resolve_device_is_canonical():
    assert models.resolve_device("cpu") == "cpu"
    assert models.resolve_device(" CPU ") == "cpu"
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert models.resolve_device("auto") == expected


def test_models_are_cached_per_name_dtype_and_device(tmp_path, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    name = str(folder)
    f32 = models.load_causal_lm(name, device="cpu", dtype="float32")
    assert models.load_causal_lm(name, dtype="float32") is f32
    bf16 = models.load_causal_lm(name, device="cpu", dtype="bfloat16")
    assert bf16 is not f32 and bf16.model.dtype == torch.bfloat16
    assert next(f32.model.parameters()).device.type == "cpu"
    if models.resolve_device("auto") == "cpu":  # 'auto' and 'cpu' are the same device here
        assert models.load_causal_lm(name, device="auto", dtype="float32") is f32
    enc = models.load_encoder(name, device="cpu")
    assert models.load_encoder(name, device="cpu", dtype="float32") is enc
    assert models.load_encoder(name, dtype="bfloat16").model.dtype == torch.bfloat16


class _Batch(dict):
    """A tokenizer's output that records where it was moved."""

    moved_to: list = []

    def to(self, device):
        _Batch.moved_to.append(torch.device(device))
        return _Batch({k: v.to(device) for k, v in self.items()})


class _FakeEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        with torch.no_grad():
            self.emb.weight.copy_(torch.arange(40, dtype=torch.float32).reshape(10, 4) % 7 - 3)

    def forward(self, input_ids, attention_mask):
        class Out:
            last_hidden_state = self.emb(input_ids)

        return Out()


def _fake_tokenizer(texts, **kw):
    ids = [[1 + len(w) % 9 for w in t.split()] for t in texts]
    width = max(map(len, ids))
    return _Batch(input_ids=torch.tensor([x + [0] * (width - len(x)) for x in ids]),
                  attention_mask=torch.tensor([[1] * len(x) + [0] * (width - len(x))
                                               for x in ids]))


def test_embed_loads_on_the_device_and_moves_every_batch_there(monkeypatch):
    from tokensieve.text import scorers

    asked = []
    model = _FakeEncoder()

    def fake_load_encoder(name, *, device="cpu", dtype="float32"):
        asked.append((name, device))
        return models.LoadedModel(model, _fake_tokenizer, name, "fake", 0.0)

    monkeypatch.setattr(models, "load_encoder", fake_load_encoder)
    _Batch.moved_to = []
    texts = ["a bb ccc", "dddd", "ee f", "g hh iii jjjj"]
    got = scorers.embed(texts, "fake", batch_size=3, device="cpu")
    assert asked == [("fake", "cpu")]
    assert _Batch.moved_to == [torch.device("cpu")] * 2  # two batches, each moved
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    for row, t in zip(got, texts, strict=True):  # mean pooling, unit length, by hand
        vec = model.emb.weight[[1 + len(w) % 9 for w in t.split()]].mean(0).detach().numpy()
        np.testing.assert_allclose(row, vec / np.linalg.norm(vec), rtol=1e-6)
    # the encoder scorer asks for the context's device
    ctx = scorers.ScoringContext("Revenue grew. Costs fell.", "What about revenue?",
                                 encoder="fake", device="cpu")
    scores = scorers.EncoderRelevanceScorer().score(np.array([[0, 13], [14, 25]]), "sentence",
                                                   ctx)
    assert scores.shape == (2,) and asked[-1] == ("fake", "cpu")


def test_scoring_context_loads_the_lm_on_its_device(monkeypatch):
    from tokensieve.text.scorers import ScoringContext

    seen = {}
    monkeypatch.setattr(models, "load_causal_lm",
                        lambda name, **kw: seen.update(name=name, **kw) or "loaded")
    assert ScoringContext("x", dtype="float32", device="cpu").causal_lm() == "loaded"
    assert seen == {"name": "default", "dtype": "float32", "device": "cpu"}


# ---------------------------------------------------------------- 2. surprisal


@pytest.fixture(scope="module")
def tiny_lm(smol_tokenizer):
    """A tiny random Llama over SmolLM2's vocabulary (real offsets, BOS, fast)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=512, initializer_range=0.5)).eval()
    return model


def _reference_surprisal(model, ids: list[int], bos: int) -> np.ndarray:
    """-log p(x_i | BOS, x_<i) with one full forward pass and an explicit log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[bos, *ids]])).logits[0].double()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids)[:, None])[:, 0]
    return (-lp).numpy()


def test_token_surprisal_builds_no_kv_cache_and_keeps_the_values(tiny_lm, smol_tokenizer):
    from tokensieve.scoring.surprisal import text_surprisal

    calls = []

    def pre(module, args, kwargs):
        calls.append(kwargs.get("use_cache"))

    def post(module, args, kwargs, out):
        calls.append(out.past_key_values)

    h1 = tiny_lm.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = tiny_lm.register_forward_hook(post, with_kwargs=True)
    text = " ".join(["Revenue grew to 12.5 million in the third quarter."] * 12)
    try:
        ts = text_surprisal(tiny_lm, smol_tokenizer, text, window=64, overlap=32)
    finally:
        h1.remove()
        h2.remove()
    n_windows = len(calls) // 2
    assert n_windows >= 3
    assert calls[0::2] == [False] * n_windows  # use_cache=False on every window
    assert calls[1::2] == [None] * n_windows  # and no cache comes back
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    # a single window covering everything equals the full-pass reference
    one = text_surprisal(tiny_lm, smol_tokenizer, text, window=400)
    ref = _reference_surprisal(tiny_lm, ids, smol_tokenizer.bos_token_id)
    np.testing.assert_allclose(one.surprisal, ref, rtol=1e-4, atol=1e-4)
    # with windows, the first window's tokens see the same context as the reference
    np.testing.assert_allclose(ts.surprisal[:63], ref[:63], rtol=1e-4, atol=1e-4)
    assert ts.surprisal.shape == (len(ids),) and np.isfinite(ts.surprisal).all()


# ---------------------------------------------------------------- 3. word -> token mapping


_GRAPHEME = regex.compile(r"\X")


def _token_units_reference(seg, tokenizer):
    """The former O(words x tokens) mapping, as the reference."""
    text = seg.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cuts = np.unique(np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1))
    spans, word_of = [], []
    for w, (ws, we) in enumerate(seg.words):
        inner = cuts[(cuts > ws) & (cuts < we)]
        if len(inner):
            bounds = {m.end() for m in _GRAPHEME.finditer(text, int(ws), int(we))}
            inner = [int(c) for c in inner if int(c) in bounds]
        points = [int(ws), *inner, int(we)]
        for a, b in zip(points[:-1], points[1:], strict=True):
            spans.append((a, b))
            word_of.append(w)
    return np.array(spans, dtype=np.int64).reshape(-1, 2), np.array(word_of, dtype=np.int64)


MAPPING_TEXTS = [
    "Revenue grew 12.5% to $48.2 million.",
    "naïve café straße Ελλάδα москва مرحبا שלום नमस्ते e\u0301tude",
    "漢字かなカタカナ中文句子。한국어 ไทย ສະບາຍ",
    "👨\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈 🇺🇸🇯🇵 1\ufe0f\u20e3 🧑🏾\u200d💻 x \u0301y",
    "  \n\tindented  lines\r\n with\u3000odd\u00a0spaces and http://ex.com/a?b=1 v1.2.3",
]


@pytest.mark.parametrize("text", MAPPING_TEXTS)
def test_token_units_equal_the_brute_force_mapping(text, smol_tokenizer):
    seg = segment(text)
    for tok in (smol_tokenizer, TOKENIZERS["hf-bpe"]):
        spans, word_of = _token_units_reference(seg, tok)
        units = token_units(seg, tok)
        np.testing.assert_array_equal(units.spans, spans)
        np.testing.assert_array_equal(units.parents["word"], word_of)
        np.testing.assert_array_equal(units.parents["sentence"], seg.sentence_of[word_of])


class _EveryThreeChars:
    """A 'tokenizer' with precomputed offsets (a cut every 3 characters), so that only the
    mapping is timed."""

    def __init__(self, text: str) -> None:
        self.offsets = [(i, min(i + 3, len(text))) for i in range(0, len(text), 3)]

    def __call__(self, text, **kw):
        return {"offset_mapping": self.offsets}


def test_token_units_mapping_is_linear_not_words_times_tokens():
    words = ["naïve", "café", "漢字", "👨\u200d👩\u200d👧", "e\u0301tude", "revenue", "12.5%"]
    text = " ".join(np.random.default_rng(0).choice(words, 32000))
    tok = _EveryThreeChars(text)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    seg = segment(text)
    linear = best(lambda: segment(text))  # a linear pass over the same text, for scale
    mapping = best(lambda: token_units(seg, tok))
    # measured: ~1x segmenting before the fix was ~10x (32k words, 40k cuts)
    assert mapping < 4 * linear, (mapping, linear)


# ---------------------------------------------------------------- 4. whitespace, big units


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts())
def test_vectorised_gap_tails_match_gap_tail(text):
    words = segment(text).words
    if len(words) < 2:
        return
    starts, ends = words[:-1, 1], words[1:, 0]
    got = gap_tails(text, starts, ends)
    want = [gap_tail(text, int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
    assert got.tolist() == want
    for s, e, k in zip(starts, ends, got, strict=True):
        assert s <= k <= e and text[k:e].count("\n") <= 2


def test_whitespace_run_is_not_charged_to_the_next_word(smol_tokenizer):
    text = "\t\n" * 500 + "Revenue was 12.5 million."
    words = segment(text).words
    for tok in (smol_tokenizer, len, TOKENIZERS["hf-bpe"]):
        counter = TokenCounter(tok)
        costs = counter.word_costs(text, words)
        assert costs[0] == counter.count("Revenue"), tok  # was ~500 (1000 with len)
        assert costs.sum() <= counter.count("Revenue was 12.5 million.") + 1, tok


def test_dropped_stretch_leaves_at_most_a_blank_line():
    text = "alpha\n\n\n\n\n\n\t\tbeta gamma\n\n\n\n\n   \t\ndelta   \t  epsilon"
    units = word_units(segment(text))
    out, _ = assemble(text, units.spans, np.array([True, False, False, True, False]))
    assert out == "alpha\n   \t\ndelta"
    out, _ = assemble(text, units.spans, np.array([False, False, True, False, True]))
    assert out == "gamma\n   \t\nepsilon"  # the dropped stretch's last line break
    out, _ = assemble(text, units.spans, np.array([False, True, True, False, False]))
    assert out == "\t\tbeta gamma"  # neighbours keep their gap; the first its indentation
    text = "one      two     three"
    units = word_units(segment(text))
    out, _ = assemble(text, units.spans, np.array([True, False, True]))
    assert out == "one three"  # no line break in the stretch: one whitespace character
    assert assemble(text, units.spans, np.array([True, True, False]))[0] == "one      two"


def test_reported_case_without_a_model(smol_tokenizer):
    for method in ("bm25", "random", "wordfreq"):
        r = compress(REPORTED, keep=0.3, question="What is the revenue?", method=method,
                     tokenizer=smol_tokenizer)
        assert r.text == "Revenue was 12.5 million.", method
        assert r.compressed_tokens <= r.target_tokens


LONG_SENTENCE = (
    "The quarterly revenue of the company, which had been growing steadily across all regions "
    "and product lines despite the supply issues that affected the semiconductor market, "
    "reached 12.5 million dollars, while operating costs, driven mainly by logistics, wages "
    "and the new warehouse in the north, rose to 9.1 million dollars, so that margins ") * 3


def test_sentence_larger_than_the_budget_is_cut_into_words_not_lost(smol_tokenizer):
    text = "Intro.\n" + LONG_SENTENCE + "ended flat.\nOther line.\n"
    r = compress(text, keep=0.3, question="What was the revenue?", method="bm25",
                 tokenizer=smol_tokenizer)
    assert r.granularity == "sentence+word"
    assert r.compressed_tokens <= r.target_tokens
    assert r.compressed_tokens >= 0.8 * r.target_tokens  # the room is used
    assert any("larger than the budget" in n for n in r.notes)
    # bm25 ranks no words: the leading words of the sentence, in order
    assert r.text.startswith("The quarterly revenue of the company")
    kept = [u.text for u in r.scores if u.kept]
    assert " ".join(kept) in " ".join(LONG_SENTENCE.split())
    # an explicit sentence granularity still keeps whole sentences only
    whole = compress(text, keep=0.3, question="What was the revenue?", method="bm25",
                     tokenizer=smol_tokenizer, granularity="sentence")
    assert "quarterly" not in whole.text and whole.granularity == "sentence"


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=texts(), tok=st.sampled_from(sorted(TOKENIZERS)),
       method=st.sampled_from(["random", "wordfreq", "bm25"]),
       target=st.integers(1, 40), lead=st.sampled_from(["", "\t\n" * 30, "   ", "\n\n\n"]))
def test_output_is_empty_only_if_the_budget_is_below_the_smallest_unit(text, tok, method,
                                                                       target, lead):
    text = lead + text
    r = compress(text, target_tokens=target, method=method, tokenizer=TOKENIZERS[tok],
                 question="What did the model budget say about revenue?"
                 if method == "bm25" else None)
    assert r.compressed_tokens <= r.target_tokens
    if not r.text:
        counter = TokenCounter(TOKENIZERS[tok])
        smallest = min(counter.count(text[s:e]) for s, e in segment(text).words)
        assert r.target_tokens < smallest, (r.target_tokens, smallest)


# ---------------------------------------------------------------- 5. markdown code blocks

FENCE = regex.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", regex.M | regex.S)
CODE = "\n".join(
    [f"def step_{i}(values, scale={i}):" + "\n    # scale every value, then sum them up"
     + f"\n    total = sum(v * scale for v in values)  # step {i}\n    return total\n"
     for i in range(12)])
MARKDOWN = (
    "# Pipeline notes\n\n"
    "The pipeline reads every input file, normalises the values and writes a summary. "
    "Each step is a small function, so that it can be tested on its own.\n\n"
    "## Code\n\n"
    "```python\n" + CODE + "```\n\n"
    "- The steps run in order and stop at the first error that they meet.\n"
    "- Results are cached on disk between runs of the same configuration.\n\n"
    "A short example:\n\n"
    "```\nrun --config example.toml\n```\n\n"
    "## Notes\n\nThe cache lives in a folder next to the input and can be removed safely.\n"
)


def _blocks(text: str) -> list[str]:
    return [m.group(0).strip(" \t") for m in FENCE.finditer(text)]


@pytest.mark.parametrize("method", ["random", "wordfreq", "bm25"])
@pytest.mark.parametrize("tok", ["smol", "whitespace", "chars"])
def test_markdown_with_a_large_code_block_compresses_and_blocks_stay_whole(
        method, tok, smol_tokenizer):
    tokenizer = smol_tokenizer if tok == "smol" else TOKENIZERS[tok]
    question = "How are results cached?" if method == "bm25" else None
    before = _blocks(MARKDOWN)
    assert len(before) == 2
    for ratio in (0.3, 0.5, 0.7):
        r = compress(MARKDOWN, keep=ratio, format="markdown", method=method,
                     tokenizer=tokenizer, question=question)  # no BudgetError
        assert r.compressed_tokens <= r.target_tokens
        assert "# Pipeline notes" in r.text and "## Code" in r.text and "## Notes" in r.text
        after = _blocks(r.text)
        assert all(block in before for block in after), r.text  # byte-identical blocks
        assert r.text.count("```") == 2 * len(after)  # no stray or cut fence
        for line in CODE.splitlines():  # no code line outside a whole block
            if line.strip() and line in r.text:
                assert any(line in block for block in after)


def test_markdown_comment_lines_in_code_are_not_headings():
    from tokensieve.text.structure import markdown_code_blocks, markdown_protected

    text = "# Title\n\n```python\n# not a heading\n- not a list\nx = 1\n```\n\n- item one\n"
    blocks = markdown_code_blocks(text)
    assert [text[s:e] for s, e in blocks] == ["```python\n# not a heading\n- not a list\n"
                                              "x = 1\n```"]
    assert [text[s:e] for s, e in markdown_protected(text)] == ["# Title", "- item"]


def test_protected_text_inside_a_code_block_keeps_the_whole_block():
    r = compress(MARKDOWN, keep=0.9, format="markdown", method="random",
                 tokenizer=ws_tokenizer, keep_text=["step_5"])  # the block is 78% of the tokens
    assert _blocks(MARKDOWN)[0] in r.text
    with pytest.raises(BudgetError):
        compress(MARKDOWN, keep=0.3, format="markdown", method="random",
                 tokenizer=ws_tokenizer, keep_text=["step_5"])


# ---------------------------------------------------------------- 6. no import circle


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_json_format_and_pipeline_do_not_import_the_compressor():
    for name in ("json_format.py", "pipeline.py"):
        assert "compressor" not in _imports(TEXT_DIR / name), name


def test_formats_take_one_options_object():
    from tokensieve.text.compressor import _compress_text
    from tokensieve.text.json_format import compress_json
    from tokensieve.text.pipeline import CompressOptions

    for fn in (compress_json, _compress_text):
        params = inspect.signature(fn).parameters
        assert "opts" in params and len(params) <= 5, list(params)
    assert "keep" in inspect.signature(compress).parameters
    assert {"method", "granularity", "fmt", "scorers", "counter", "protect", "keep",
            "keep_spans", "keep_numbers", "allow_over", "finest", "timings"} <= set(
        CompressOptions.__dataclass_fields__)


def test_json_path_still_compresses_through_the_shared_pipeline():
    import json

    obj = {"id": 7, "body": SHORT, "tags": ["finance", "q3"]}
    r = compress(json.dumps(obj), format="json", keep=0.6, method="random",
                 tokenizer=ws_tokenizer, keep_text=["48.2"])
    out = json.loads(r.text)
    assert out["id"] == 7 and "48.2" in out["body"] and r.compressed_tokens <= r.target_tokens


# ---------------------------------------------------------------- with the embedded models


@pytest.mark.model
def test_reported_case_with_the_default_method():
    r = compress(REPORTED, keep=0.3, question="What is the revenue?")
    assert r.text == "Revenue was 12.5 million."
    assert r.compressed_tokens <= r.target_tokens
    assert compress(REPORTED, keep=0.3).text.strip()  # and without the question


@pytest.mark.model
def test_default_method_cuts_an_oversized_sentence_with_its_word_scorer():
    text = "Intro.\n" + LONG_SENTENCE + "ended flat.\n"
    r = compress(text, keep=0.3, question="What was the revenue?")
    assert r.granularity == "sentence+word"
    assert 0.8 * r.target_tokens <= r.compressed_tokens <= r.target_tokens
    assert "revenue" in r.text


@pytest.mark.model
def test_default_markdown_with_code_compresses_to_a_third():
    r = compress(MARKDOWN, keep=0.3, format="markdown")
    assert r.compressed_tokens <= r.target_tokens
    after = _blocks(r.text)
    assert all(block in _blocks(MARKDOWN) for block in after)
    assert r.text.count("```") == 2 * len(after)


def test_word_scores_count_every_token_once(tiny_lm, smol_tokenizer):
    """Byte-level BPE tokens start at the space before a word (" unbelie" + "vable"): a
    word's score must include its first token. Found by the inspect review: the first
    token of every multi-token word used to be counted in no word at all."""
    from tokensieve.scoring.surprisal import text_surprisal

    text = "The quick unbelievable fox jumped over extraordinarily lazy dogs."
    ts = text_surprisal(tiny_lm, smol_tokenizer, text, window=400)
    words = np.array([(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)])
    per_word = ts.aggregate(words, "sum")
    np.testing.assert_allclose(per_word.sum(), ts.surprisal.sum(), rtol=1e-9)
    word = list(map(tuple, words)).index((10, 22))  # "unbelievable": two tokens
    np.testing.assert_allclose(per_word[word], ts.surprisal[2:4].sum(), rtol=1e-9)
