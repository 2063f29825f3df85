"""Token reward models whose token score is a calibrated log-prob: w_t = a * log pi(y_t) + b.

The paper's token RM (a token head on the policy's backbone, `load_token_rm`) stays at chance
on the curriculum at the demo's scale (`benchmarks/credit.py`): a tiny backbone cannot compute
from scratch which number in a chain is wrong. The policy's own log-prob of each sampled token
already marks it (the wrong number is the surprising token), so these models start from it:

- `logprob`: pi_phi is a trainable copy of the policy, trained on outcomes with the same BCE of
  sigmoid(mean_t w_t) against r as the paper's RM: credit learned from outcomes only.
- `surprise`: pi is a frozen copy of the policy; only a and b learn (the no-learning baseline).

a and b calibrate c_t = sigmoid(mean w) for the token weights' threshold tau: with a large a and
b > 0, tokens before a surprising token keep c_t high and the surprising one pulls it down. a is
stored as log a; both train with their own learning rate (`algo.credit_calib_lr`), since two
scalars must travel several units within a short run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

HEAD_FILE = "credit_head.json"
CALIBRATION = ("log_scale", "offset")  # the parameters beside the LM, kept in HEAD_FILE


def token_scores(rm: nn.Module, input_ids, attention_mask, targets) -> torch.Tensor:
    """[N, L-1] token scores w_t of any credit model, aligned with the shifted targets (position t
    scores token t + 1).

    The paper's token RM is read as the reference reads it (`rm_logits[-n-1:-1]` in
    `train_oreal.py`): the head at position t, which has seen the tokens up to t, scores token
    t + 1, so a token's score is the RM's view of the prefix before it. A log-prob credit's score
    of token t + 1 is its log-probability there (it does see the token: that is the surprise).
    """
    if isinstance(rm, LogProbCredit):
        return rm(input_ids, attention_mask, targets)
    return rm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, 0]


class LogProbCredit(nn.Module):
    def __init__(self, lm: nn.Module, train_lm: bool = True, scale: float = 1.0, offset: float = 0.0):
        super().__init__()
        self.lm = lm.requires_grad_(train_lm)
        dev = next(lm.parameters()).device
        # shape [1], not scalars: FSDP2 shards parameters along dim 0 and refuses 0-d ones
        self.log_scale = nn.Parameter(torch.tensor([math.log(scale)], device=dev))
        self.offset = nn.Parameter(torch.tensor([float(offset)], device=dev))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def calibration(self) -> list[nn.Parameter]:
        return [getattr(self, k) for k in CALIBRATION]

    def forward(self, input_ids, attention_mask, targets) -> torch.Tensor:
        """[N, L-1] scores aligned with the shifted targets: position t scores token t + 1. (The
        forward, so that FSDP2 gathers the sharded parameters around it.)"""
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return self.scale * lp + self.offset

    def gradient_checkpointing_enable(self) -> None:
        self.lm.gradient_checkpointing_enable()

    def save(self, path: str | Path, tokenizer, state_dict: dict | None = None) -> None:
        """An HF directory of the LM plus the calibration in credit_head.json (exact, as hex).
        `state_dict`: this module's full state (FSDP2 gathers it first), else its own."""
        from .loading import save_model

        lm_state = None  # the LM saves its own parameters
        if state_dict is not None:
            lm_state = {k.removeprefix("lm."): v for k, v in state_dict.items() if k.startswith("lm.")}
        save_model(self.lm, tokenizer, path, lm_state)
        calib = state_dict if state_dict is not None else dict(zip(CALIBRATION, self.calibration()))
        (Path(path) / HEAD_FILE).write_text(json.dumps({k: calib[k].item().hex() for k in CALIBRATION}))

    @staticmethod
    def read(path: str | Path) -> dict:
        """The full state dict (this module's keys) of a directory `save` wrote."""
        from .loading import read_safetensors

        state = {f"lm.{k}": v for k, v in read_safetensors(path).items()}
        head = json.loads((Path(path) / HEAD_FILE).read_text())
        state.update({k: torch.tensor([float.fromhex(head[k])]) for k in CALIBRATION})
        return state

    def load(self, path: str | Path) -> None:
        from .loading import load_weights

        load_weights(self.lm, path)
        head = json.loads((Path(path) / HEAD_FILE).read_text())
        with torch.no_grad():
            for k, p in zip(CALIBRATION, self.calibration()):
                p.fill_(float.fromhex(head[k]))
