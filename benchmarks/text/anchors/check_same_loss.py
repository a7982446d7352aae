"""Mean token loss of a fixed text under a causal-LM folder, for comparing transformers versions.

Runs in either venv (transformers 5 in .venv, 4.46 in .venv-anchors):

    python check_same_loss.py MODEL_DIR [--text FILE] [--chars 2000]

Prints one JSON line: transformers version, number of tokens, sha256 of the token ids, the
mean next-token loss (float32, CPU) and the rope_theta the loaded model really uses (read from
its rotary embedding, so a config value the library ignored shows up here).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def effective_rope_theta(model) -> float | None:
    """rope_theta recovered from inv_freq[1] = theta ** (-2 / head_dim)."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv = getattr(rotary, "inv_freq", None)
    if inv is None or inv.numel() < 2:
        return None
    head_dim = 2 * inv.numel()
    return float(f"{float(inv[1].double() ** (-head_dim / 2)):.5g}")  # float32 inv_freq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--text", default=str(ROOT / "examples" / "report.txt"))
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    text = Path(args.text).read_text(encoding="utf-8")[: args.chars]
    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    # transformers 5 renamed torch_dtype to dtype.
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, local_files_only=True, **{dtype_kw: torch.float32}
    ).eval()
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    print(json.dumps({
        "transformers": transformers.__version__,
        "n_tokens": int(ids.shape[1]),
        "ids_sha256": hashlib.sha256(json.dumps(ids[0].tolist()).encode()).hexdigest()[:16],
        "loss": round(loss, 6),
        "rope_theta": effective_rope_theta(model),
    }))


if __name__ == "__main__":
    main()
