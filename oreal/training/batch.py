"""The batch of one training step: the rollouts of B questions, and the responses selected
from them for the loss, cut into micro-batches.

The loss sees every selected response as a row of right-padded [N, T] tensors (mask, weights,
log-probs). The models need not: a micro-batch's forward takes its rows packed into one sequence
(`ModelInputs.packed`), positions restarting at each row and no attention mask, which transformers
reads as "keep the rows apart" (SDPA, eager and flex build a block-diagonal causal mask;
flash-attention takes the rows as varlen segments). `ModelInputs.rows` puts each token's result
back in its row, so no compute goes to padding and nothing downstream changes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .. import algo
from .. import distributed as dist_utils
from ..data.records import Problem
from ..rollout import Rollout


@dataclass
class RolloutBatch:
    """K graded rollouts for each of the step's B questions. Under data parallelism every rank
    holds every question and the whole [B, K] reward matrix, but only the rollouts of its own
    contiguous share [lo, hi) of the questions, give or take the selected rows that token
    balancing (`oreal.training.balance`) moved in from other ranks or out to them. A step that
    refilled (`oreal.training.refill`) joins its rounds, each sharded alike: a rank's questions
    are then its share of each round, `local`."""
    questions: list[Problem]
    groups: list[list[Rollout]]  # groups[b - lo][k] for lo <= b < hi (groups[local[b]][k] with `local`)
    rewards: torch.Tensor  # [B, K] in {0, 1}, the whole batch
    lo: int
    hi: int
    stats: dict = field(default_factory=dict)  # unfinished, timeouts, tokens, seconds (all ranks)
    moved_in: dict[tuple[int, int], Rollout] = field(default_factory=dict)  # sampled elsewhere, trained here
    moved_out: frozenset[tuple[int, int]] = frozenset()  # sampled here, trained elsewhere
    cut: torch.Tensor | None = None  # [B, K] bool: cut at max_new_tokens (unfinished), the whole batch (algo.overlong)
    local: dict[int, int] | None = None  # question -> its group's index, where not the one range [lo, hi)

    def _slot(self, b: int) -> int | None:
        """Where question b's group is in `groups`; None: another rank sampled it."""
        if self.local is not None:
            return self.local.get(b)
        return b - self.lo if self.lo <= b < self.hi else None

    def is_local(self, b: int) -> bool:
        """Whether this rank sampled question b."""
        return self._slot(b) is not None

    def rollout(self, b: int, k: int) -> Rollout:
        """A rollout this rank holds: one it sampled, or a row moved in."""
        if (b, k) in self.moved_in:
            return self.moved_in[(b, k)]
        return self.groups[self._slot(b)][k]

    def local_pairs(self) -> list[tuple[int, int]]:
        """Every (question, sample) this rank sampled and kept, in order."""
        mine = range(self.lo, self.hi) if self.local is None else sorted(self.local)
        return [(b, k) for b in mine for k in range(len(self.groups[self._slot(b)])) if (b, k) not in self.moved_out]

@dataclass
class SelectedBatch:
    """This rank's selected responses, one right-padded row each. Position t of the shifted
    tensors (`targets`, `mask`) predicts ids[:, t + 1]; `mask` is 1 on response tokens."""
    rows: list[tuple[int, int]]  # (question in the whole batch, sample) of each row
    ids: torch.Tensor  # [N, L]
    attn: torch.Tensor  # [N, L]
    targets: torch.Tensor  # [N, L - 1]
    mask: torch.Tensor  # [N, L - 1]
    reward: torch.Tensor  # [N]
    adv: torch.Tensor  # [N]
    lengths: list[int]  # prompt + response tokens of each row
    engine_logp: torch.Tensor | None = None  # [N, L - 1] the engine's log-probs of the sampled tokens (0 elsewhere)

    @property
    def positive(self) -> torch.Tensor:
        return self.reward > 0.5

    @classmethod
    def build(cls, roll: RolloutBatch, rows: list[tuple[int, int]], adv: torch.Tensor, pad_id: int,
              device: torch.device | str = "cpu") -> "SelectedBatch":
        """One row for each of `rows`, the (b, k) this rank trains (`balance.rank_rows`: each a
        rollout `roll` holds); `adv` is the whole batch's [B, K]."""
        seqs = [(roll.rollout(b, k).prompt_ids, roll.rollout(b, k).response_ids) for b, k in rows]
        ids, attn, targets, mask = batch_tensors(seqs, pad_id)
        reward = torch.tensor([roll.rewards[b, k].item() for b, k in rows])
        advs = torch.tensor([adv[b, k].item() for b, k in rows])
        engine_logp = None
        if all(roll.rollout(b, k).logprobs is not None for b, k in rows):
            engine_logp = torch.zeros_like(mask)
            for i, (b, k) in enumerate(rows):
                r = roll.rollout(b, k)
                start = len(r.prompt_ids) - 1  # position p - 1 predicts token p
                engine_logp[i, start:start + len(r.response_ids)] = torch.tensor(r.logprobs)
            engine_logp = engine_logp.to(device)
        return cls(rows, ids.to(device), attn.to(device), targets.to(device), mask.to(device),
                   reward.to(device), advs.to(device), [len(p) + len(r) for p, r in seqs], engine_logp)

    @classmethod
    def padding(cls, pad_id: int, device: torch.device | str = "cpu") -> "SelectedBatch":
        """One all-padding row that adds zero to every loss sum: under FSDP2 every forward is a
        collective, so a rank with fewer micro-batches runs these to keep in step."""
        ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device)
        return cls([], ids, torch.ones((1, 2), dtype=torch.long, device=device), ids[:, 1:],
                   torch.zeros((1, 1), device=device), torch.zeros(1, device=device),
                   torch.zeros(1, device=device), [2], torch.zeros((1, 1), device=device))

    def __getitem__(self, sl: slice) -> "SelectedBatch":
        return replace(self, rows=self.rows[sl], ids=self.ids[sl], attn=self.attn[sl], targets=self.targets[sl],
                       mask=self.mask[sl], reward=self.reward[sl], adv=self.adv[sl], lengths=self.lengths[sl],
                       engine_logp=None if self.engine_logp is None else self.engine_logp[sl])

    def token_counts(self) -> tuple[float, float]:
        """(positive, negative) response tokens on this rank."""
        pos = self.positive
        return (self.mask * pos[:, None]).sum().item(), (self.mask * (~pos)[:, None]).sum().item()

    def micro_batches(self, max_seqs: int, max_tokens: int = 0, packed: bool = False) -> list[slice]:
        return micro_batches(self.lengths, max_seqs, max_tokens, packed)


@dataclass
class ModelInputs:
    """One forward's inputs: rows padded to [m, L] with their attention mask, or packed into
    [1, S] (S = the rows' total length) with position ids that restart at each row. `targets`
    are the shifted ids (position t predicts ids[:, t + 1]); `rows` maps a result per position of
    these inputs back to the [m, L - 1] rows."""
    ids: torch.Tensor
    targets: torch.Tensor
    attn: torch.Tensor | None = None  # padded
    position_ids: torch.Tensor | None = None  # packed
    index: torch.Tensor | None = None  # packed: [m, L - 1] position in the pack of each row position
    valid: torch.Tensor | None = None  # packed: [m, L - 1] whether that row position is a token's

    @classmethod
    def padded(cls, batch: "SelectedBatch") -> "ModelInputs":
        return cls(batch.ids, batch.targets, attn=batch.attn)

    @classmethod
    def packed(cls, batch: "SelectedBatch") -> "ModelInputs":
        """The rows of `batch` end to end, no padding. A row of n tokens gives n - 1 predictions;
        the position that ends a row predicts the next row's first token, which no mask counts."""
        lengths = torch.tensor(batch.lengths, device=batch.ids.device)
        starts = torch.cumsum(lengths, 0) - lengths
        cols = torch.arange(batch.ids.shape[1], device=batch.ids.device)
        real = cols[None, :] < lengths[:, None]  # [m, L]
        ids = batch.ids[real][None]
        position_ids = (cols[None, :].expand_as(real))[real][None]
        t = cols[None, :-1]
        valid = t < (lengths[:, None] - 1)
        index = torch.where(valid, starts[:, None] + t, 0)
        return cls(ids, ids[:, 1:], position_ids=position_ids, index=index, valid=valid)

    @property
    def is_packed(self) -> bool:
        return self.position_ids is not None

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """[m, L - 1] from a result per position of these inputs ([1, S - 1] packed; padded: as is),
        0 where a row has no token."""
        if not self.is_packed:
            return x
        return torch.where(self.valid, x[0][self.index], torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass
class MicroBatch:
    """One forward/backward's share of a SelectedBatch: its rows as the loss sees them (`batch`)
    and the inputs of the models' forwards (`inputs`, packed or padded)."""
    rows: slice | None  # its rows in the step's batch; None for an all-padding one (FSDP2 keeps ranks in step)
    batch: SelectedBatch
    inputs: ModelInputs | None = None

    def __post_init__(self):
        if self.inputs is None:
            self.inputs = ModelInputs.padded(self.batch)

    @property
    def real(self) -> bool:
        return self.rows is not None


def micro_batches(lengths: list[int], max_seqs: int, max_tokens: int = 0, packed: bool = False) -> list[slice]:
    """Consecutive slices of at most `max_seqs` sequences and, when `max_tokens` is set, at most
    that many tokens: their sum when the rows are packed, longest x count when padded. Dynamic
    batching keeps memory flat when response lengths vary; a row longer than the budget goes
    alone."""
    out, start, longest, total = [], 0, 0, 0
    for i, n in enumerate(lengths):
        longest_with, total_with = max(longest, n), total + n
        size = total_with if packed else longest_with * (i - start + 1)
        full = i - start >= max_seqs or (max_tokens and i > start and size > max_tokens)
        if full:
            out.append(slice(start, i))
            start, longest_with, total_with = i, n, n
        longest, total = longest_with, total_with
    if start < len(lengths):
        out.append(slice(start, len(lengths)))
    return out


def count_tokens(batch: SelectedBatch, n_selected: int, max_new_tokens: int) -> tuple[algo.TokenCounts, int]:
    """The policy loss's normalisers and the step's trained tokens (prompts too), over all ranks: one collective."""
    pos, neg, tokens = dist_utils.sum_floats([*batch.token_counts(), float(sum(batch.lengths))])
    return algo.TokenCounts(pos, neg, n_selected, max_new_tokens), int(tokens)


def cut_micro_batches(batch: SelectedBatch, max_seqs: int, max_tokens: int, packed: bool, pad_id: int,
                      device: torch.device | str, fsdp: bool) -> list[MicroBatch]:
    """The batch cut by `max_seqs` rows / `max_tokens` tokens (`micro_batches`), each micro-batch's
    rows packed into one sequence for the models with `packed`. Under FSDP2 every forward and
    backward is a collective, so every rank runs as many micro-batches as the busiest one: the
    extra ones are all-padding rows that add zero to every sum."""
    slices = batch.micro_batches(max_seqs, max_tokens, packed)
    n = dist_utils.max_int(len(slices)) if fsdp else len(slices)
    parts = [(sl, batch[sl]) for sl in slices] + [
        (None, SelectedBatch.padding(pad_id, device)) for _ in range(n - len(slices))]
    return [MicroBatch(sl, b, ModelInputs.packed(b) if packed else None) for sl, b in parts]


def batch_tensors(seqs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and shifted targets with a response mask."""
    L = max((len(p) + len(r) for p, r in seqs), default=1)
    N = len(seqs)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    attn = torch.zeros((N, L), dtype=torch.long)
    resp = torch.zeros((N, L), dtype=torch.float)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        attn[i, :n] = 1
        resp[i, len(p):n] = 1.0
    return ids, attn, ids[:, 1:], resp[:, 1:]
