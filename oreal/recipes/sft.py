"""Supervised fine-tuning: teacher-forced NLL on solution tokens (prompt tokens are masked).

Builds a tiny policy from scratch (tokenizer trained on the data) or fine-tunes any HF causal LM
directory; evaluates pass@1 by sampling during training; saves a standard HF directory.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import save_config
from ..data import PromptConfig, load_list, render
from ..evaluation import evaluate
from ..models import (TinyModelConfig, build_tiny_policy, load_policy, load_tokenizer, save_model,
                      train_tokenizer)
from ..errors import RunDirError
from ..optim import make_optimizer
from ..preflight import check_device, writable_dir
from ..rollout import HFSampler, SamplingConfig
from ..training.rundir import earlier_run


@dataclass
class SFTConfig:
    out: str = "runs/sft"
    model: str | None = None  # an HF directory to fine-tune; None builds a tiny model from scratch
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    data: str = "curriculum_train"  # registry name or path; rows need a `solution`
    eval_data: str = "curriculum_test"
    eval_limit: int = 200
    eval_every: int = 200
    steps: int = 1000
    max_seconds: float = 0.0  # stop early after this long (0 = no limit)
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # the embedded policy was trained with these
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0  # torch threads (0 = leave as is)
    device: str = "cpu"
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(system=None, use_chat_template=False))
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64))
    overwrite: bool = False  # replace an earlier SFT run in `out` (never done without it)


def encode_example(tokenizer, prompt_text: str, answer_text: str) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) for prompt + answer + eos."""
    p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + a, [-100] * len(p) + a


def collate(examples, pad_id: int):
    L = max(len(x) for x, _ in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), L), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), L), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, labels, mask


SFT_FILES = ("sft_config.yaml", "sft_summary.json", "model")  # what makes `out` hold an earlier SFT run


def check_sft_out(cfg: SFTConfig) -> None:
    """Before any work (one line, exit 2): the device exists, `out` can be written, and holds no
    earlier SFT run unless `overwrite` (the rule `oreal train` keeps)."""
    check_device(cfg.device)
    out = Path(cfg.out)
    writable_dir(out, f"out={out}")
    found = earlier_run(out, SFT_FILES)
    if found and not cfg.overwrite:
        raise RunDirError(f"out={out} holds an earlier SFT run ({', '.join(found)}): pass overwrite=true to "
                          f"replace it, or another out=")


def weights_digest(model) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes, in name order: equal digests
    are equal weights, bit for bit (how the embedded policy's rebuild is checked)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def environment() -> dict:
    """What decides a CPU run's last bits besides the code: the same recipe gives other weights
    under another torch build, kernel set (AVX2 against AVX-512) or thread count."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def run_sft(cfg: SFTConfig, verifier=None, log=print) -> dict:
    check_sft_out(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "sft_config.yaml")
    train = [p for p in load_list(cfg.data) if p.solution]
    if not train:
        raise ValueError(f"{cfg.data}: no rows with a worked `solution` to imitate")
    test = load_list(cfg.eval_data)[: cfg.eval_limit] if cfg.eval_data else []
    if cfg.model is None:
        tok = train_tokenizer([render(p.prompt, None, cfg.prompt) + p.solution for p in train],
                              vocab_size=cfg.tiny.vocab_size)
        model = build_tiny_policy(tok, cfg.tiny, seed=cfg.seed).to(cfg.device)
    else:
        tok = load_tokenizer(cfg.model)
        model = load_policy(cfg.model, device=cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"sft: {n_params / 1e6:.2f}M parameters, {len(train)} training problems")
    encoded = [encode_example(tok, render(p.prompt, tok, cfg.prompt), p.solution) for p in train]
    opt, sched = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.warmup, cfg.steps, cfg.min_lr, betas=cfg.betas)
    engine = HFSampler(model, tok)
    history = []
    t0 = time.time()

    def run_eval(step):
        if not test or verifier is None:
            return None
        res = evaluate(engine, tok, test, verifier, k=1, sampling=cfg.sampling, prompt=cfg.prompt,
                       seed=cfg.seed)
        log(f"sft step {step}: eval pass@1 {res['pass@1']:.3f} (T={cfg.sampling.temperature})")
        return res["pass@1"]

    model.train()
    step = 0
    for step in range(1, cfg.steps + 1):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(cfg.batch_size)]
        ids, labels, mask = (t.to(cfg.device) for t in collate(batch, tok.pad_token_id))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        rec = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
               "seconds": time.time() - t0}
        if step % 50 == 0:
            log(f"sft step {step}/{cfg.steps}: loss {rec['loss']:.4f} ({rec['seconds']:.0f}s)")
        if cfg.eval_every and step % cfg.eval_every == 0:
            rec["eval_pass@1"] = run_eval(step)
        history.append(rec)
        if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
            log(f"sft: time limit reached at step {step}")
            break
    final = history[-1].get("eval_pass@1") if "eval_pass@1" in history[-1] else run_eval(step)
    model.eval()
    save_model(model, tok, out / "model")
    summary = {"steps": step, "seconds": time.time() - t0, "final_loss": history[-1]["loss"],
               "eval_pass@1": final, "parameters": n_params, "weights_sha256": weights_digest(model),
               "environment": environment()}
    with open(out / "sft_metrics.jsonl", "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
