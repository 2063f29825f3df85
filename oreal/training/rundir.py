"""The run directory's plumbing: the console step line, signals that stop a run cleanly, and
the JSONL files a run appends to (cut back on resume, capped in size)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..config import save_config
from ..errors import RunDirError, TrainingError
from ..preflight import writable_dir


def format_step(m: dict, total: int) -> str:
    """One console line per step: what a user watches while a run goes."""
    parts = [f"step {m['step']:>4}/{total}", f"reward {m['reward']:.3f}",
             f"kept {m['kept_questions']:>3}", f"sel {m['selected']:>3} (+{m['positives'] or 0}/-{m['negatives'] or 0})"]
    if m.get("loss") is not None:
        parts += [f"pos {m['loss_pos']:+.4f}", f"neg {m['loss_neg']:+.4f}", f"kl {m['kl']:.4f}",
                  f"ent {m['entropy']:.3f}"]
    if m.get("credit_loss") is not None:
        parts += [f"credit {m['credit_loss']:.3f} acc {m['credit_acc']:.2f}"]
    if m.get("skipped"):
        parts.append("SKIPPED (all filtered)")
    if m.get("nonfinite"):
        parts.append("SKIPPED (non-finite)")
    if m.get("verifier_timeouts"):
        parts.append(f"timeouts {m['verifier_timeouts']}")
    if m.get("judge_failures"):
        parts.append(f"judge failures {m['judge_failures']}")
    parts += [f"{m['tokens_per_s']:.0f} tok/s", f"{m['seconds']:.1f}s"]
    if m.get("eta") is not None:
        parts.append(f"eta {m['eta']:.0f}s")
    if m.get("eval_pass@1") is not None:
        parts.append(f"eval {m['eval_pass@1']:.3f}")
    return " | ".join(parts)


class StopOnSignal:
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, stop. A second Ctrl-C stops at once."""

    def __init__(self, log):
        self.log, self.signum, self._old = log, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                # an ignored SIGINT stays ignored (a background job of a shell, `nohup`-style
                # launchers): Python keeps that disposition at start-up, and training must too,
                # or a run would honour Ctrl-C in some phases and not in others
                if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                 f"(Ctrl-C again stops at once and loses the steps since the last checkpoint)")

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def keep_rows(path: Path, upto: int) -> list[dict]:
    """The JSONL rows of steps <= `upto` (a resume drops what came after its checkpoint); the
    file is rewritten atomically to hold just those."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if row.get("step", 0) <= upto:
                rows.append(row)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows


class CappedJsonl:
    """Append-only JSONL that stops growing at `max_mb` (trajectory dumps)."""

    def __init__(self, path: Path, max_mb: float, log):
        self.path, self.limit, self.log = path, max_mb * 2**20, log
        self.size = path.stat().st_size if path.exists() else 0
        self.full = False

    def write(self, rows: list[dict]) -> None:
        if self.full or not rows:
            return
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if self.size + len(text) > self.limit:
            self.full = True
            self.log(f"{self.path.name} reached its {self.limit / 2**20:.0f} MB cap; no more trajectory dumps")
            return
        with open(self.path, "a") as f:
            f.write(text)
        self.size += len(text)


def trajectory_records(roll, rows: list[tuple[int, int]], adv, weights, tokenizer, step: int,
                       limit: int) -> list[dict]:
    """Up to `limit` of this rank's responses for trajectories.jsonl, with reward, advantage and
    token weights (the selected `rows` first; their weights are those the policy loss used)."""
    row_of = {bk: i for i, bk in enumerate(rows)}
    order = list(rows) + [bk for bk in roll.local_pairs() if bk not in row_of]
    out = []
    for b, k in order[:limit]:
        r, q = roll.rollout(b, k), roll.questions[b]
        ids = r.response_ids
        kept = _kept_positions(len(ids))  # a long response: its head and tail only
        rec = {"step": step, "id": q.id, "prompt": tokenizer.decode(r.prompt_ids), "gold": q.gold,
               "response": _cut_text([ids[i] for i in kept], len(ids), tokenizer),
               "response_tokens": len(ids), "reward": roll.rewards[b, k].item(),
               "advantage": adv[b, k].item(), "pass_rate": roll.rewards[b].mean().item(),
               "selected": (b, k) in row_of, "tokens": tokenizer.batch_decode([[ids[i]] for i in kept])}
        if len(kept) < len(ids):
            rec["cut"] = [DUMP_TOKENS // 2, len(ids) - DUMP_TOKENS // 2]  # tokens [a, b) are not in the record
        if weights is not None and (b, k) in row_of:
            start = len(r.prompt_ids) - 1  # shifted targets: position p-1 predicts token p
            w = weights[row_of[(b, k)], start:start + len(ids)].tolist()
            rec["weights"] = [round(w[i], 4) for i in kept]
        out.append(rec)
    return out


# a dumped response keeps this many tokens (its first and last halves) and says where it was cut:
# at 16k-token responses a whole record is about 0.4 MB, and the file's cap would end the dumps
# within a few steps
DUMP_TOKENS = 4096


def _kept_positions(n: int) -> list[int]:
    if n <= DUMP_TOKENS:
        return list(range(n))
    half = DUMP_TOKENS // 2
    return [*range(half), *range(n - half, n)]


def _cut_text(kept_ids: list[int], n: int, tokenizer) -> str:
    if n <= DUMP_TOKENS:
        return tokenizer.decode(kept_ids)
    half = DUMP_TOKENS // 2
    return (tokenizer.decode(kept_ids[:half]) + f" [... {n - DUMP_TOKENS} tokens cut ...] "
            + tokenizer.decode(kept_ids[half:]))


# What a run leaves in its directory; any of them means a fresh start there would replace a run
RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "summary.json")


def earlier_run(out: str | Path, files: tuple[str, ...] = RUN_FILES) -> list[str]:
    """The files of an earlier run in `out` (none: the directory is new, empty or unrelated);
    `files`: those a run of this kind leaves (a training run's by default)."""
    out = Path(out)
    return [name for name in files if (out / name).exists()]


def check_run_dir(cfg) -> None:
    """Everything about `cfg.out` that can fail, checked before anything is created or changed:
    it must be (or can become) a writable directory, and a fresh start (no `resume`) over an
    earlier run is refused unless `overwrite`."""
    out = Path(cfg.out)
    writable_dir(out, f"out={out}")  # tried for real, and nothing left behind
    found = earlier_run(out)
    if not cfg.resume and found and not cfg.overwrite:
        raise RunDirError(f"out={out} holds an earlier run ({', '.join(found)}): pass resume=auto to continue "
                          f"it, overwrite=true to replace it, or another out=")


def prepare_run_dir(cfg, main: bool) -> None:
    """Create `cfg.out`, delete an earlier run's checkpoints when `overwrite` (a fresh start),
    and write config.yaml (rank 0 only). Call `check_run_dir` first, before any slow work (not
    here: under torchrun rank 0 may already have started writing when another rank gets here)."""
    out = Path(cfg.out)
    root = out / "checkpoints"
    try:
        if not cfg.resume and cfg.overwrite and ckpt.list_checkpoints(root):
            dist_utils.barrier()
            if main:
                shutil.rmtree(root)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
    except OSError as e:
        raise TrainingError(f"cannot write to run directory {out}: {e}") from None
