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


def token_scores(rm: nn.Module, input_ids, attention_mask, targets) -> torch.Tensor:
    """[N, L-1] token scores w_t of any credit model, aligned with the shifted targets (position t
    scores token t + 1).

    The paper's token RM is read as the reference reads it (`rm_logits[-n-1:-1]` in
    `train_oreal.py`): the head at position t, which has seen the tokens up to t, scores token
    t + 1, so a token's score is the RM's view of the prefix before it. A log-prob credit's score
    of token t + 1 is its log-probability there (it does see the token: that is the surprise).
    """
    if isinstance(rm, LogProbCredit):
        return rm.token_scores(input_ids, attention_mask, targets)
    return rm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, 0]


class LogProbCredit(nn.Module):
    def __init__(self, lm: nn.Module, train_lm: bool = True, scale: float = 1.0, offset: float = 0.0):
        super().__init__()
        self.lm = lm.requires_grad_(train_lm)
        dev = next(lm.parameters()).device
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), device=dev))
        self.offset = nn.Parameter(torch.tensor(float(offset), device=dev))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def calibration(self) -> list[nn.Parameter]:
        return [self.log_scale, self.offset]

    def token_scores(self, input_ids, attention_mask, targets) -> torch.Tensor:
        """[N, L-1] scores aligned with the shifted targets: position t scores token t + 1."""
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return self.scale * lp + self.offset

    def gradient_checkpointing_enable(self) -> None:
        self.lm.gradient_checkpointing_enable()

    def save(self, path: str | Path, tokenizer, state_dict: dict | None = None) -> None:
        """An HF directory of the LM plus the calibration in credit_head.json (exact, as hex)."""
        from .loading import save_model

        save_model(self.lm, tokenizer, path, state_dict)
        head = {"log_scale": self.log_scale.item().hex(), "offset": self.offset.item().hex()}
        (Path(path) / HEAD_FILE).write_text(json.dumps(head))

    def load(self, path: str | Path) -> None:
        from .loading import load_weights

        load_weights(self.lm, path)
        head = json.loads((Path(path) / HEAD_FILE).read_text())
        with torch.no_grad():
            self.log_scale.fill_(float.fromhex(head["log_scale"]))
            self.offset.fill_(float.fromhex(head["offset"]))
