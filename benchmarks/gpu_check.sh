#!/usr/bin/env bash
# Everything only a GPU can show, as one script for the GPU machine (../shared/device/README.md):
#   bash ../shared/device/prepare            # here: copies the missing wheels into .whl/
#   (device run, carry .whl)  bash benchmarks/gpu_check.sh
# Writes under $OUT: versions.txt, cuda_tests.log, gpu_smoke.json + gpu_smoke.log, demo_cuda.log +
# demo/summary.json. Each part runs even if an earlier one failed; the exit code is the worst.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
rc=0
{ nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
} > "$OUT/versions.txt" 2>&1 || rc=1
timeout 240 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py > "$OUT/cuda_tests.log" 2>&1 || rc=1
OUT="$OUT" timeout 180 torchrun --standalone --nproc_per_node 1 benchmarks/gpu_smoke.py > "$OUT/gpu_smoke.log" 2>&1 || rc=1
( time timeout 240 python3 -m oreal.cli demo --out "$OUT/demo" device=cuda ) > "$OUT/demo_cuda.log" 2>&1 || rc=1
tail -n 3 "$OUT"/*.log
exit $rc
