#!/usr/bin/env bash
# GPU smoke test (under 8 minutes on one H100/H200): installs the project, then trains a
# from-scratch ~0.2B policy for a few OREAL-loop steps with FSDP2 + bf16 on one GPU.
# Results: ${OUT:-runs}/gpu_smoke.json (GPU model, tokens/s for rollout and training, peak memory).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e . 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total --format=csv || true
torchrun --standalone --nproc_per_node 1 benchmarks/gpu_smoke.py
