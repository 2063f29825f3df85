#!/usr/bin/env bash
# Everything only a GPU can show, in parts that each fit one command on the lent GPU machine (at
# most 600 s a command, about 12 minutes in all: ../shared/device/README.md). Most important first,
# so the first parts show the most if the time runs out:
#   plan     issue 39: a 7B-shaped slice (Qwen2.5-7B's widths, 2 layers, its 152k-row embedding and
#            output layer) under FSDP2 over NCCL, bf16 compute, float32 masters, activation
#            checkpointing: one 16k-token update's peak against `oreal plan`, the vLLM check's
#            forward at 4 x 16k, packed against padded on SDPA (benchmarks/gpu_memory_check.py)
#   quick    a handful of `cuda` tests (the sampler, OREAL's 3 steps plain / FSDP2 / FSDP2+bf16,
#            the log-prob credit in bf16, with and without cpu_offload)
#   cuda     the `cuda` tests: every preset plain / FSDP2 / FSDP2+bf16, the log-prob credit with
#            bf16 and cpu_offload, LoRA, save + resume, evaluation (2 NCCL ranks where 2 GPUs are)
#   memory   issue 30's memory benchmark on a Qwen2.5-1.5B-shaped model, 1k / 4k / 16k tokens,
#            full logits against the chunked path
#   smoke    4 FSDP2 + bf16 steps of a ~0.2B policy: tokens/s and MFU
#   demo     60 steps of `oreal demo device=cuda`
# Usage (after `bash ../shared/device/prepare` here, carrying .whl):
#   bash benchmarks/gpu_check.sh "plan quick"    # issue 39's one command: at most 450 s of parts
#   bash benchmarks/gpu_check.sh cuda            # one part per device command
#   bash benchmarks/gpu_check.sh memory smoke    # parts that fit one command together
# Writes under $OUT: versions.txt and PART.log for each part (gpu_smoke.json from smoke). Each part
# runs even if an earlier one failed; the exit code is the worst.
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

part() {  # name, timeout in seconds (each at most 480: a part and the set-up fit one 600 s command)
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s)"
  ( time timeout "$limit" "$@" ) > "$OUT/$name.log" 2>&1 || rc=1
  tail -n 4 "$OUT/$name.log"
}

for p in "${@:-cuda memory smoke demo}"; do
  for name in $p; do
    case $name in
      plan) OUT="$OUT" part plan 270 torchrun --standalone --nproc_per_node 1 benchmarks/gpu_memory_check.py ;;
      quick) part quick 180 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py \
               -k "sampler_matches or (three_steps and oreal-) or logprob_credit_on_cuda" ;;
      cuda) part cuda 480 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py ;;
      memory) part memory 420 python3 benchmarks/policy_update_memory.py --device cuda --size 1.5b \
                --tokens 1024 4096 16384 --full-up-to 16384 ;;
      smoke) OUT="$OUT" part smoke 240 torchrun --standalone --nproc_per_node 1 benchmarks/gpu_smoke.py ;;
      demo) part demo 300 python3 -m oreal.cli demo --steps 60 --out "$OUT/demo" device=cuda ;;
      *) echo "unknown part $name (plan, quick, cuda, memory, smoke, demo)"; rc=2 ;;
    esac
  done
done
exit $rc
