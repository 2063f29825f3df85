"""GPU smoke test: a from-scratch ~0.2B-parameter Qwen2 policy (plus reference and token RM),
FSDP2 with bf16 mixed precision on one GPU, a few OREAL-loop steps on the curriculum.

    bash benchmarks/gpu_smoke.sh            # writes $OUT/gpu_smoke.json (or runs/gpu_smoke.json)

Reports rollout tokens/s, training tokens/s, the per-phase split of a step (sampling, grading,
token RM, policy, optimiser), the training phase's MFU and peak GPU memory. MFU counts 6N FLOPs
per token for the policy's and the token RM's forward+backward and 2N for the reference forward
(N: parameters outside the input embedding; attention's own FLOPs left out), over every token of
the selected sequences, divided by the device's dense bf16 peak. The random-init policy answers
nothing correctly, so the pass-rate filter is off (algo.filter=false, GRPO preset): every
sampled sequence still goes through the token RM, policy and reference forward/backward, which
is what the throughput figures need.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oreal.models import TinyModelConfig, build_tiny_policy, load_tokenizer, save_model  # noqa: E402
from oreal.recipes.train import Trainer  # noqa: E402
from oreal.training.config import build_config  # noqa: E402
from oreal.verify import Verifier  # noqa: E402


BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, per GPU


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def main() -> None:
    out = Path(os.environ.get("OUT", "runs")) / "gpu_smoke"
    out.mkdir(parents=True, exist_ok=True)
    device = os.environ.get("DEVICE", "cuda")  # DEVICE=cpu SIZE=tiny: a dry run of this script
    cuda = device.startswith("cuda")
    tok = load_tokenizer("default")
    size = TinyModelConfig(hidden_size=1024, layers=16, heads=16, kv_heads=4, intermediate_size=2816,
                           max_positions=2048)
    if os.environ.get("SIZE") == "tiny":
        size = TinyModelConfig(max_positions=512)
    model = build_tiny_policy(tok, size)
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = n_params - model.get_input_embeddings().weight.numel()
    save_model(model, tok, out / "init")
    del model
    steps = int(os.environ.get("STEPS", "4"))
    B, K, T = (int(os.environ.get(k, d)) for k, d in (("B", "32"), ("K", "8"), ("MAX_NEW", "256")))
    cfg = build_config(None, [
        f"out={out / 'run'}", f"policy={out / 'init'}", f"device={device}", f"fsdp={os.environ.get('FSDP', 'true')}", f"mixed_precision={str(cuda).lower()}",
        "eval_data=null", f"steps={steps}", f"batch_questions={B}", f"samples={K}", "micro_batch=32",
        "algo.name=grpo", "algo.filter=false", "algo.actor_freeze_steps=0", "algo.token_weights=threshold",
        f"sampling.max_new_tokens={T}", "sampling.top_p=1.0", "prompt.use_chat_template=false",
        "prompt.system=null", "dump_per_step=0", "overwrite=true", "verifier_workers=4"])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    with Verifier(workers=4) as v:
        tr = Trainer(cfg, v, log=print)
        for _ in range(steps):
            sync()
            t0 = time.time()
            m = tr.step().metrics
            sync()
            m["wall"] = time.time() - t0
            rows.append(m)
            print({k: m[k] for k in ("step", "response_tokens", "train_tokens", "sample_seconds", "grade_seconds",
                                     "credit_seconds", "policy_seconds", "optim_seconds", "seconds")}, flush=True)
    warm = rows[1:] or rows  # the first step includes CUDA and kernel warm-up
    gen_tok = sum(m["response_tokens"] for m in warm)
    roll_s = sum(m["rollout_seconds"] for m in warm)
    train_s = sum(m["seconds"] - m["rollout_seconds"] for m in warm)
    phases = {p: sum(m[f"{p}_seconds"] or 0.0 for m in warm) / len(warm)
              for p in ("sample", "grade", "credit", "policy", "optim")}
    flops = sum(14 * n_matmul * (m["train_tokens"] or 0) for m in warm)  # 6N policy + 6N RM + 2N reference
    peak = bf16_peak(torch.cuda.get_device_name(0)) if cuda else None
    train_phase = sum((m["credit_seconds"] or 0) + (m["policy_seconds"] or 0) + (m["optim_seconds"] or 0) for m in warm)
    result = {
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (dry run on CPU)", "torch": torch.__version__, "parameters": n_params,
        "precision": "bf16 compute (FSDP2 MixedPrecisionPolicy), fp32 master weights",
        "rollouts_per_step": B * K, "max_new_tokens": T, "steps_measured": len(warm),
        "rollout_tokens_per_s": gen_tok / roll_s,
        # token RM fwd+bwd, policy fwd+bwd and reference fwd over every sampled sequence
        "train_tokens_per_s": gen_tok / train_s,
        "step_seconds": [round(m["wall"], 2) for m in rows],
        "mean_phase_seconds": {k: round(v, 3) for k, v in phases.items()},
        "train_tflops_per_s": flops / train_phase / 1e12 if train_phase else None,
        "mfu_train": flops / train_phase / peak if (peak and train_phase) else None,
        "bf16_peak_tflops": peak / 1e12 if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    (out.parent / "gpu_smoke.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
