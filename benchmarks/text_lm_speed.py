"""Where the LM path's time goes (issue 21's LM-path speed): SmolLM2-135M on a 1024-token
window, 2 threads, bfloat16 and float32 -- the decoder body, the output head over every
position, one GEMM of the model's MLP shape (the machine's matrix rate), and whole
``text_surprisal`` calls; the ceiling is that matrix rate over the model's multiply-adds per
token. Writes ``benchmarks/results/text-lm-speed/results.json``.

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/text_lm_speed.py   # ~2 min
"""

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch  # noqa: E402
from throughput import best_time  # noqa: E402  (benchmarks/ is on the path)

from tokensieve.models import load_causal_lm  # noqa: E402
from tokensieve.scoring.surprisal import text_surprisal  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "text-lm-speed"
WINDOW, D, FF, KV, LAYERS, VOCAB = 1024, 576, 1536, 192, 30, 49152


def best(f, n: int = 3) -> float:
    """The fastest of ``n`` timed calls after one warm-up call."""
    f()
    return best_time(f, n)


def measure(dtype: str, text: str) -> dict:
    lm = load_causal_lm("default", dtype=dtype)
    model, tok = lm.model, lm.tokenizer
    ids = torch.randint(100, 40000, (1, WINDOW))
    with torch.inference_mode():
        body = best(lambda: model.model(input_ids=ids, use_cache=False))
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        head = best(lambda: [model.lm_head(hidden[:, a:a + 85]) for a in range(0, WINDOW, 85)])
        x = torch.randn(WINDOW, D, dtype=model.dtype)
        w = torch.randn(FF, D, dtype=model.dtype)
        gemm = best(lambda: torch.nn.functional.linear(x, w), 10)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    whole = best(lambda: text_surprisal(model, tok, text, progress=False), 2)
    return {"body_s_per_1024": round(body, 3), "head_s_per_1024": round(head, 3),
            "gemm_gmac_per_s": round(WINDOW * D * FF / gemm / 1e9, 1),
            "text_surprisal_tokens_per_s": round(n / whole), "tokens": n}


def main() -> None:
    torch.set_num_threads(2)
    text = (ROOT / "examples" / "report.txt").read_text() * 12
    out = {dtype: measure(dtype, text) for dtype in ("bfloat16", "float32")}
    macs = LAYERS * (D * D * 2 + D * KV * 2 + 3 * D * FF) + D * VOCAB
    out["macs_per_token"] = macs
    out["ceiling_tokens_per_s_bf16"] = round(out["bfloat16"]["gemm_gmac_per_s"] * 1e9 / macs)
    print(json.dumps(out, indent=1))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
