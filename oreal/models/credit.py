"""Credit models: what scores each response token for OREAL's token weights, behind one interface.

`CreditModel` is what the trainer needs of one (scores, optimiser groups, save/load, FSDP2
sharding); `CREDIT_MODELS` names them for `algo.credit`:

- `token_head`: the paper's token RM, the policy's backbone with a one-logit-per-token head.
- `logprob`: w_t = a * log pi_phi(y_t) + b, pi_phi a trainable copy of the policy, trained on
  outcomes with the same BCE of sigmoid(mean_t w_t) against r: credit learned from outcomes only.
- `surprise`: the same with pi frozen; only a and b learn (the no-learning baseline).

The paper's token RM stays at chance on the curriculum at the demo's scale (`benchmarks/credit.py`):
a tiny backbone cannot compute from scratch which number in a chain is wrong. The policy's own
log-prob of each sampled token already marks it (the wrong number is the surprising token).
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

from .. import distributed as dist_utils
from ..optim import param_groups
from ..errors import ModelError
from .loading import (decoder_layers, enable_checkpointing, forward_kwargs, load_backbone, load_policy, load_weights,
                      read_safetensors, read_weights, resolve_model_path, save_model)

HEAD_FILE = "credit_head.json"
CALIBRATION = ("log_scale", "offset")  # the parameters beside the LM, kept in HEAD_FILE
HEAD_WEIGHTS = "token_head.safetensors"  # the token RM's scalar head, in its backbone's directory


class CreditModel(nn.Module):
    """A token reward model: `forward(ids, attn, targets, position_ids=None)` gives [N, L-1] token
    scores w_t aligned with the shifted targets (position t scores token t + 1); rows packed into
    one sequence come with `position_ids` and no `attn` (`oreal.models.forward_kwargs`). It is the
    forward, so that FSDP2 gathers the sharded parameters around it. Saved as a plain HF directory
    of its `inner` model."""

    inner_name: str  # the attribute holding the HF model inside (what `save` writes as an HF directory)

    @property
    def inner(self) -> nn.Module:
        return getattr(self, self.inner_name)

    def scores(self, input_ids, attention_mask, targets, position_ids=None) -> torch.Tensor:
        return self(input_ids, attention_mask, targets, position_ids)

    def param_groups(self, weight_decay: float, calib_lr: float) -> list[dict]:
        """AdamW groups (`oreal.optim.param_groups`); extra parameters take `calib_lr`."""
        return param_groups(self, weight_decay)

    def shard(self, bf16: bool = False, cpu_offload: bool = False) -> None:
        """FSDP2: each decoder layer of the inner model, then this module; every rank's shards hold
        rank 0's weights (the new head's, the calibration's) where the others built it on the meta
        device (`oreal.distributed.shard_from_rank0`)."""
        dist_utils.shard_from_rank0(
            self, lambda: dist_utils.fsdp_wrap(self, decoder_layers(self.inner, required=True), bf16, cpu_offload))

    def gradient_checkpointing_enable(self) -> None:
        enable_checkpointing(self.inner)

    def save(self, path: str | Path, tokenizer, state_dict: dict | None = None) -> None:
        """An HF directory of the inner model. `state_dict`: this module's full state (FSDP2
        gathers it first), else its own."""
        save_model(self.inner, tokenizer, path, _inner_state(state_dict, self.inner_name))

    def read(self, path: str | Path) -> dict:
        """The full state dict (this module's keys) of a directory `save` wrote."""
        return {f"{self.inner_name}.{k}": v for k, v in read_weights(path).items()}

    def load(self, path: str | Path) -> None:
        """Load a directory `save` wrote, exactly; under FSDP2 into the shards."""
        if dist_utils.is_fsdp(self):
            dist_utils.load_full_state_dict(self, self.read(path))
        else:
            load_weights(self.inner, path)

    def after_optimizer_load(self, opt: torch.optim.Optimizer) -> None:
        """Adapt optimiser state loaded from an older checkpoint (nothing to do by default)."""

    def use_token_logprobs(self, fn) -> None:
        """Take an LM's token log-probs from `fn(lm, ids, attn, targets, position_ids=) -> (logp, _)`
        (the trainer's chunked path, `logprob_chunk`) instead of its full logits; for credit models
        that score by log-probs (nothing to do for the others)."""


def _inner_state(state_dict: dict | None, prefix: str) -> dict | None:
    if state_dict is None:
        return None
    return {k.removeprefix(prefix + "."): v for k, v in state_dict.items() if k.startswith(prefix + ".")}


class TokenHeadCredit(CreditModel):
    """The paper's token RM: the policy's backbone (its base model, without the LM head) and a
    scalar head, `nn.Linear(hidden, 1, bias=False)` as in the reference (`train_oreal.py` puts it
    in place of the LM head), zero-initialised as there (`docs/OREAL-fidelity.md`): every token
    starts at c_t = 0.5 and the first steps train the head alone. Any causal LM has a backbone;
    few have a token-classification class.

    Saved as the backbone's HF directory (`AutoModel.from_pretrained` reads it back) with the head
    in that directory too, in `token_head.safetensors`. Directories of the token-classification model earlier
    versions saved (`score` with a bias) still load.

    Read as the reference reads it (`rm_logits[-n-1:-1]` in `train_oreal.py`): the head at
    position t, which has seen the tokens up to t, scores token t + 1, so a token's score is the
    RM's view of the prefix before it."""

    inner_name = "backbone"

    def __init__(self, backbone: nn.Module, score: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        if score is None:
            p = next(backbone.parameters())
            hidden = backbone.config.get_text_config(decoder=True).hidden_size
            score = nn.Linear(hidden, 1, bias=False, device=p.device, dtype=p.dtype)
            nn.init.zeros_(score.weight)
        self.score = score

    def forward(self, input_ids, attention_mask, targets, position_ids=None) -> torch.Tensor:
        hidden = self.backbone(**forward_kwargs(input_ids, attention_mask, position_ids)).last_hidden_state
        return self.score(hidden[:, :-1]).squeeze(-1)

    def save(self, path: str | Path, tokenizer, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        super().save(path, tokenizer, state_dict)
        head = {k: v for k, v in (state_dict or {"score." + n: t for n, t in self.score.state_dict().items()}).items()
                if k.startswith("score.")}
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(Path(path) / HEAD_WEIGHTS))

    def read(self, path: str | Path) -> dict:
        head = read_head(path)
        if "score.bias" in head and self.score.bias is None:
            raise ModelError(f"{path}: a token RM with a biased head (an earlier oreal's, before the head became "
                             "the reference's bias-free one); load it with oreal.models.load_token_head or start anew")
        return {**{f"{self.inner_name}.{k}": v for k, v in read_weights(path, base=True).items()}, **head}

    def load(self, path: str | Path) -> None:
        state = self.read(path)
        if dist_utils.is_fsdp(self):
            dist_utils.load_full_state_dict(self, state)
            return
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        load_weights(self.backbone, path, state=backbone, base=True)
        self.score.load_state_dict({k.removeprefix("score."): v for k, v in state.items() if k.startswith("score.")})


def read_head(path: str | Path) -> dict:
    """A saved token RM's head tensors, keyed `score.weight` (and `score.bias` in the
    token-classification directories of earlier versions); its backbone is `read_weights(path, base=True)`."""
    from safetensors.torch import load_file

    if (Path(path) / HEAD_WEIGHTS).is_file():
        return load_file(str(Path(path) / HEAD_WEIGHTS))
    state = read_safetensors(path)
    if "score.weight" not in state:
        raise ModelError(f"{path} holds no token RM head ({HEAD_WEIGHTS}); a policy directory makes a new "
                         "head through load_token_head")
    return {k: state[k] for k in ("score.weight", "score.bias") if k in state}


def load_token_head(src: str, dtype: str = "float32", device="cpu") -> TokenHeadCredit:
    """The token RM from a policy directory (its backbone and a new head) or from a directory a
    token RM was saved to (this version's or an earlier one's), exactly as saved."""
    path = resolve_model_path(src)
    backbone = load_backbone(path, dtype, device)
    is_saved_rm = (Path(path) / HEAD_WEIGHTS).is_file() or any(
        a.endswith("ForTokenClassification") for a in (backbone.config.architectures or []))
    if not is_saved_rm:
        return TokenHeadCredit(backbone)
    head = read_head(path)  # the backbone is loaded above, as saved
    p = next(backbone.parameters())
    score = nn.Linear(head["score.weight"].size(1), 1, bias="score.bias" in head, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        score.weight.copy_(head["score.weight"].reshape(1, -1))
        if score.bias is not None:
            score.bias.copy_(head["score.bias"].reshape(1))
    return TokenHeadCredit(backbone, score)


class LogProbCredit(CreditModel):
    """w_t = a * log pi(y_t) + b. A log-prob credit's score of token t + 1 is its log-probability
    there (it does see the token: that is the surprise)."""

    inner_name = "lm"

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

    def set_calibration(self, scale: float, offset: float) -> None:
        """Set a and b in place (under FSDP2 each rank's shard: rank 0 holds them, the others none)."""
        with torch.no_grad():
            for p, v in zip(self.calibration(), (math.log(scale), float(offset))):
                (p.to_local() if hasattr(p, "to_local") else p).fill_(v)

    def calibration(self) -> list[nn.Parameter]:
        return [getattr(self, k) for k in CALIBRATION]

    token_logprobs = None  # fn(lm, ids, attn, targets, position_ids=) -> (logp, _), or None: the full logits

    def use_token_logprobs(self, fn) -> None:
        self.token_logprobs = fn

    def forward(self, input_ids, attention_mask, targets, position_ids=None) -> torch.Tensor:
        if self.token_logprobs is not None:
            lp = self.token_logprobs(self.lm, input_ids, attention_mask, targets, position_ids=position_ids)[0]
        else:
            logits = self.lm(**forward_kwargs(input_ids, attention_mask, position_ids)).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return self.scale * lp + self.offset

    def param_groups(self, weight_decay: float, calib_lr: float) -> list[dict]:
        return param_groups(self, weight_decay, {p: calib_lr for p in self.calibration()})

    def save(self, path: str | Path, tokenizer, state_dict: dict | None = None) -> None:
        """The LM's HF directory plus the calibration in credit_head.json (exact, as hex)."""
        super().save(path, tokenizer, state_dict)
        calib = state_dict if state_dict is not None else dict(zip(CALIBRATION, self.calibration()))
        (Path(path) / HEAD_FILE).write_text(json.dumps({k: calib[k].item().hex() for k in CALIBRATION}))

    def read(self, path: str | Path) -> dict:
        state = super().read(path)
        head = json.loads((Path(path) / HEAD_FILE).read_text())
        state.update({k: torch.tensor([float.fromhex(head[k])]) for k in CALIBRATION})
        return state

    def load(self, path: str | Path) -> None:
        if dist_utils.is_fsdp(self):
            dist_utils.load_full_state_dict(self, self.read(path))
            return
        load_weights(self.lm, path)
        head = json.loads((Path(path) / HEAD_FILE).read_text())
        with torch.no_grad():
            for k, p in zip(CALIBRATION, self.calibration()):
                p.fill_(float.fromhex(head[k]))

    def after_optimizer_load(self, opt: torch.optim.Optimizer) -> None:
        """AdamW moments of the calibration from checkpoints made before FSDP2 support, when a and
        b were 0-d: AdamW's in-place update cannot broadcast a 0-d moment to [1]."""
        for p in self.calibration():
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and k != "step" and v.shape != p.shape and v.numel() == p.numel():
                    opt.state[p][k] = v.reshape(p.shape)


def _token_head(src: str, dtype: str, device, init) -> CreditModel:
    return load_token_head(src, dtype, device)


def _logprob(src: str, dtype: str, device, init, train_lm: bool = True) -> CreditModel:
    scale, offset = init
    return LogProbCredit(load_policy(src, dtype, device), train_lm, scale, offset)


# algo.credit: a new credit model is a CreditModel subclass with a builder
# (src, dtype, device, init) -> CreditModel, and one line here
CREDIT_MODELS = {
    "token_head": _token_head,
    "logprob": _logprob,
    "surprise": lambda src, dtype, device, init: _logprob(src, dtype, device, init, train_lm=False),
}


def load_credit_model(kind: str, src: str, dtype: str = "float32", device="cpu",
                      init: tuple[float, float] | str = (1.0, 0.0)) -> CreditModel:
    """The credit model `algo.credit` names, from a policy directory (a new head or a copy of the
    policy) or from a directory an earlier run saved. `init`: a, b of a log-prob credit, or "auto"
    (`algo.credit_init`): built at 1, 0, then calibrated on the first batch (`oreal.training.credit`)."""
    if kind not in CREDIT_MODELS:
        raise ValueError(f"unknown credit model {kind!r}; choose from {sorted(CREDIT_MODELS)}")
    return CREDIT_MODELS[kind](src, dtype, device, (1.0, 0.0) if isinstance(init, str) else tuple(init))
