#!/usr/bin/env bash
# One short GPU session, everything into one folder: on a fresh CUDA machine where torch and triton are
# already installed and there is no network, install fastbert without dependencies, then run the stages of
# benchmarks/gpu_stages.py in priority order, each under its own time budget (8 minutes of wall in all):
# environment, smoke test of every fused op, kernel tests, kernel benchmarks, model grid, training step,
# torch.compile. OUT gets summary.md, results.json (both rewritten after every stage), run.log and plots.
#   bash benchmarks/gpu_run.sh [--dry-run] [--only STAGES] [--skip STAGES] [--budget NAME=SECONDS] OUT
# --dry-run walks every stage on the CPU (Triton interpreter, tiny shapes) in under 3 minutes.
# PYTHON picks the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET

# Checks the options (one line on stderr if they are wrong) and says where the results go.
OUT=$("$PY" -m benchmarks.gpu_stages --print-out "$@") || exit 2
mkdir -p "$OUT" || exit 2
dry_run=0
for arg in "$@"; do [ "$arg" = --dry-run ] && dry_run=1; done

# fastbert from this tree, installed in editable mode (dependencies are the image's); a dry run keeps an
# editable install of this tree that is already there.
installed_here() {
  "$PY" - <<'PYTHON'
import importlib.metadata as metadata, json, os, sys
try:
    url = json.loads(metadata.distribution("fastbert-triton").read_text("direct_url.json") or "{}").get("url", "")
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if os.path.realpath(url.removeprefix("file://")) == os.path.realpath(".") else 1)
PYTHON
}
{
  echo "===== install ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
  if [ "$dry_run" = 1 ] && installed_here; then
    echo "dry run: fastbert is already installed from this tree (editable); not reinstalled"
  else
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
      || "$PY" -m pip install -q --no-deps -e .
  fi
} > "$OUT/run.log" 2>&1

exec "$PY" -m benchmarks.gpu_stages --append-log --spent "$SECONDS" "$@"
