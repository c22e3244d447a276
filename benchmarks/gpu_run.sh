#!/usr/bin/env bash
# One GPU session, everything into one folder: on a fresh CUDA machine where torch and triton are already
# installed and there is no network, install fastbert without dependencies, run the CUDA tests, the
# kernel checks and the whole benchmark suite.
#   bash benchmarks/gpu_run.sh [OUT]        (OUT defaults to gpu-run-<date>)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-run-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET

python -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
  || python -m pip install -q --no-deps -e . >> "$OUT/install.log" 2>&1
{ nvidia-smi; python -c "import torch, triton; print(torch.__version__, triton.__version__)"; fastbert info; } \
  > "$OUT/environment.txt" 2>&1

status=0
python -m pytest -q -m cuda tests > "$OUT/pytest-cuda.txt" 2>&1 || status=1
python -m pytest -q -x tests/kernels > "$OUT/pytest-kernels.txt" 2>&1 || status=1
fastbert check-kernels --arch 80,90 > "$OUT/check-kernels.txt" 2> "$OUT/check-kernels.log" || status=1
fastbert bench --device cuda --out "$OUT/bench" > "$OUT/bench.txt" 2>&1 || status=1
echo "exit status $status; results in $OUT"
exit $status
