#!/usr/bin/env bash
# Fresh-clone check: clone this repository's committed HEAD into a temporary folder, set it up
# from scratch with empty caches (TOKENSIEVE_CACHE, TOKENSIEVE_DATA and HOME all new and
# empty), then run the quick mode of every benchmark end to end: each `tokensieve bench
# <target> --quick` that the CLI lists, and benchmarks/dataset_throughput.py --quick.
# One PASS/FAIL line per step, the logs beside them; exits 1 if any step failed.
#
#   bash scripts/check_fresh_clone.sh                 # everything (about 1 h on 2 shared cores)
#   bash scripts/check_fresh_clone.sh --no-anchors    # without the LLMLingua / Selective
#                                                     # Context venv (bench text runs without them)
#   bash scripts/check_fresh_clone.sh --only text,vision   # some benchmarks only
#   bash scripts/check_fresh_clone.sh --keep          # keep the temporary folder afterwards
#   bash scripts/check_fresh_clone.sh --reuse DIR     # iterate: a folder kept by --keep, its
#                                                     # clone moved to HEAD, venvs and caches kept
#                                                     # (not a fresh check: say so if you report it)
#
# Only package registries are reached (pip's configured index, Debian's apt for nothing by
# default); uncommitted changes are not part of the check (it clones HEAD).
set -uo pipefail
SRC="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
ANCHORS=1
KEEP=0
ONLY=""
REUSE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-anchors) ANCHORS=0 ;;
    --keep) KEEP=1 ;;
    --only) ONLY="$2"; shift ;;
    --reuse) REUSE="$2"; KEEP=1; shift ;;
    *) echo "usage: $0 [--no-anchors] [--keep] [--only text,kv,vision,dataset] [--reuse DIR]" >&2
       exit 2 ;;
  esac
  shift
done
if [ -n "$REUSE" ]; then
  [ -d "$REUSE/repo/.git" ] || { echo "--reuse $REUSE: no repo/ from an earlier --keep run" >&2; exit 2; }
  WORK="$(cd "$REUSE" && pwd)"
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokensieve-fresh.XXXXXX")"
fi
RUN="run-$(date -u +%Y%m%dT%H%M%S)"  # logs and outputs of this run (a reused folder keeps the older)
LOGS="$WORK/$RUN/logs"
OUT="$WORK/$RUN/out"
mkdir -p "$LOGS" "$WORK/home" "$WORK/cache" "$WORK/data"
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
export HOME="$WORK/home" TOKENSIEVE_CACHE="$WORK/cache" TOKENSIEVE_DATA="$WORK/data"
export OMP_WAIT_POLICY=passive TOKENIZERS_PARALLELISM=false
unset PYTHONPATH VIRTUAL_ENV
FAILED=0
step() {  # step NAME COMMAND...: run in the clone, log to $LOGS/NAME.log, print PASS/FAIL
  local name="$1"; shift
  local t0=$SECONDS
  if (cd "$WORK/repo" && "$@") >"$LOGS/$name.log" 2>&1; then
    echo "PASS  $name ($((SECONDS - t0)) s)"
  else
    echo "FAIL  $name ($((SECONDS - t0)) s): last lines of $LOGS/$name.log:"
    tail -n 5 "$LOGS/$name.log" | sed 's/^/      /'
    FAILED=1
  fi
}
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

HEAD_SHA="$(git -C "$SRC" rev-parse HEAD)"
if [ -n "$REUSE" ]; then
  echo "REUSED clone (not fresh: venvs and caches kept) in $WORK, moved to ${HEAD_SHA:0:7}"
  git -C "$WORK/repo" fetch -q "$SRC" "$(git -C "$SRC" rev-parse --abbrev-ref HEAD)" && \
    git -C "$WORK/repo" checkout -q "$HEAD_SHA" || { echo "FAIL  update the clone"; exit 1; }
else
  echo "fresh clone of $SRC (${HEAD_SHA:0:7}) in $WORK"
  git clone -q --no-local "$SRC" "$WORK/repo" && \
    git -C "$WORK/repo" checkout -q "$HEAD_SHA" || { echo "FAIL  clone"; exit 1; }
fi
step setup bash scripts/setup.sh
[ -x "$WORK/repo/.venv/bin/tokensieve" ] || { echo "setup made no .venv: stopping"; exit 1; }
if [ "$ANCHORS" = 1 ] && wanted text; then
  step setup-anchors bash benchmarks/text/anchors/setup_anchors.sh
fi
if wanted kv; then
  step setup-kvpress .venv/bin/python -m pip install -q -c constraints.txt -e ".[kvpress]"
fi
# the benchmarks the CLI offers: `tokensieve bench <target>`
TARGETS=$(cd "$WORK/repo" && .venv/bin/tokensieve bench list-targets 2>&1 \
  | sed -n "s/.*choose from \([^)]*\)).*/\1/p" | tr -d "',")
[ -n "$TARGETS" ] || { echo "FAIL  could not list the bench targets"; exit 1; }
echo "bench targets: $TARGETS"
for target in $TARGETS; do
  wanted "$target" || continue
  step "bench-$target" .venv/bin/tokensieve bench "$target" --quick --out "$OUT/$target"
done
if wanted dataset; then
  step dataset-throughput .venv/bin/python benchmarks/dataset_throughput.py --quick \
    --out "$OUT/dataset"
fi
if [ "$FAILED" = 0 ]; then echo "fresh-clone check: all steps passed"; else
  echo "fresh-clone check: FAILED (logs in $LOGS$([ "$KEEP" = 1 ] || echo ', removed: rerun with --keep'))"
fi
exit "$FAILED"
