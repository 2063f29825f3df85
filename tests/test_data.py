import json

import pytest

from oreal.data import (BENCHMARKS, DataError, Problem, PromptConfig, balance,
                        band_repeats, load, load_problems, render, save_problems)
from oreal.data import curriculum


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_registry_benchmarks_load_with_right_counts(bench_dir, name):
    res = load(name, bench_dir)
    assert len(res.problems) == BENCHMARKS[name].count
    assert not res.skipped
    assert all(p.question.strip() and p.gold.strip() for p in res.problems)
    assert len({p.id for p in res.problems}) == len(res.problems)
    assert all(p.extract == BENCHMARKS[name].extract for p in res.problems)


def test_every_benchmark_gold_parses_with_the_verifier(bench_dir, verifier):
    failures = {}
    for name in BENCHMARKS:
        probs = load(name, bench_dir).problems
        verdicts = verifier.verify_batch([(p.gold, f"\\boxed{{{p.gold}}}") for p in probs])
        bad = [(p.id, p.gold, v.status, v.detail) for p, v in zip(probs, verdicts) if not v.correct]
        if bad:
            failures[name] = bad
    # Known: none today. If a future data file has golds Math-Verify cannot read, list them here.
    assert failures == {}, failures


def test_presets_normalise_golds(bench_dir):
    aime24 = load("aime24", bench_dir).problems
    raw = [json.loads(x) for x in open(bench_dir / "aime24.jsonl")]
    padded = [(r["answer"], p.gold) for r, p in zip(raw, aime24) if str(r["answer"]).startswith("0")]
    assert padded and all(g == str(int(a)) for a, g in padded)
    amc = load("amc23", bench_dir).problems
    assert amc[0].gold == "27"
    gsm = load("gsm8k", bench_dir).problems
    assert gsm[0].gold == "18"
    oly = load("olympiadbench", bench_dir).problems
    assert all("$" not in p.gold for p in oly)
    minerva = load("minerva", bench_dir).problems
    assert minerva[0].gold and minerva[0].extract == "boxed"
    m = load("math500", bench_dir).problems[0]
    assert m.level and m.subject and m.id.startswith("test/")


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_oreal_prompt_format_and_custom_fields(tmp_path):
    p = _write(tmp_path, "rl.jsonl", json.dumps({"question": "1+1?", "gold_answer": "2", "pass_rate": 0.25}) + "\n")
    (prob,) = load_problems(p, "oreal").problems
    assert prob.gold == "2" and prob.pass_rate == 0.25
    p = _write(tmp_path, "c.jsonl", json.dumps({"q": "2+2?", "a": 4, "key": "k1"}) + "\n")
    (prob,) = load_problems(p, "oreal", fields={"question": "q", "answer": "a", "id": "key"}).problems
    assert (prob.question, prob.gold, prob.id) == ("2+2?", "4", "k1")


def test_csv_json_parquet_and_hf_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "question": "1+1?", "gold": "2"}, {"id": "b", "question": "2+2?", "gold": "4"}]
    _write(tmp_path, "d.json", json.dumps(rows))
    _write(tmp_path, "d.csv", "id,question,gold\na,1+1?,2\nb,2+2?,4\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    for f in ("d.json", "d.csv", "d.parquet", "hf"):
        probs = load_problems(tmp_path / f).problems
        assert [(p.id, p.gold) for p in probs] == [("a", "2"), ("b", "4")], f


@pytest.mark.parametrize("content,message", [
    ('{"id": "a", "question": "q", "gold": "1"}\n{"id": "b", "question": ', "line 2: malformed JSON"),
    ('{"id": "a", "gold": "1"}\n', "line 1: field 'question': missing"),
    ('{"id": "a", "question": "  ", "gold": "1"}\n', "line 1: field 'question': empty"),
    ('{"id": "a", "question": "q", "gold": ""}\n', "line 1: field 'gold': empty"),
    ('{"id": "a", "question": "q"}\n', "line 1: field 'gold': missing"),
    ('{"id": "a", "question": 5, "gold": "1"}\n', "line 1: field 'question': expected a string, got int"),
    ('{"id": "a", "question": "q", "gold": ["1"]}\n', "line 1: field 'gold': expected a string, got list"),
    ('{"id": "a", "question": "q", "gold": "1"}\n{"id": "a", "question": "r", "gold": "2"}\n',
     "line 2: field 'id': duplicate id 'a' (first at line 1)"),
    ('{"id": "a", "question": "q", "gold": "1", "pass_rate": 3}\n', "line 1: field 'pass_rate'"),
    ('[1, 2]\n', "line 1: expected an object"),
])
def test_bad_input_errors_name_file_line_and_field(tmp_path, content, message):
    p = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(DataError) as e:
        load_problems(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_undecodable_bytes_and_skip_bad(tmp_path):
    p = _write(tmp_path, "bytes.jsonl",
               b'{"id": "a", "question": "q", "gold": "1"}\n\xff\xfe{"x"\n{"id": "c", "question": "r", "gold": "2"}\n',
               mode="wb")
    with pytest.raises(DataError, match="line 2: undecodable bytes"):
        load_problems(p)
    res = load_problems(p, skip_bad=True)
    assert [x.id for x in res.problems] == ["a", "c"]
    assert len(res.skipped) == 1 and "line 2" in res.skipped[0]


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown file type"):
        load_problems(_write(tmp_path, "x.txt", "hi"))
    with pytest.raises(DataError, match="no such file"):
        load_problems(tmp_path / "nope.jsonl")


def test_save_and_reload_round_trip(tmp_path):
    probs = curriculum.generate(20, "train", seed=3)
    save_problems(probs, tmp_path / "c.jsonl")
    again = load_problems(tmp_path / "c.jsonl").problems
    assert [p.to_dict() for p in again] == [p.to_dict() for p in probs]


def test_curriculum_is_deterministic_disjoint_and_correct():
    a = curriculum.generate(300, "train", seed=1)
    b = curriculum.generate(300, "train", seed=1)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in curriculum.generate(300, "train", seed=2)] != [p.question for p in a]
    train = {p.question for p in curriculum.generate(5000, "train", seed=0)}
    test = {p.question for p in curriculum.generate(500, "test", seed=0)}
    assert not train & test
    for p in a:
        assert p.skills and p.subject in curriculum.SUBJECTS.values() and p.level
        assert p.solution.endswith(f"\\boxed{{{p.gold}}}")
        # every step of the worked solution is true arithmetic
        for step in p.solution.split(".")[0].split(","):
            lhs, rhs = step.split("=")
            op = next(c for c in "+-*" if c in lhs[1:])
            x, y = lhs.split(op, 1) if lhs[0] != "-" else (lhs, "")
            assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] == int(rhs)
    skills = {p.subject for p in a}
    assert skills == set(curriculum.SUBJECTS.values())


def test_curriculum_mix_can_weaken_a_skill():
    probs = curriculum.generate(500, "train", seed=0, mix={"add": 1, "sub": 1, "mul": 0})
    assert {p.subject for p in probs} == {"addition", "subtraction"}
    with pytest.raises(ValueError, match="unknown skill"):
        curriculum.generate(5, mix={"div": 1})


def test_difficulty_balancing_bands():
    assert [band_repeats(x) for x in (0.0, 0.19, 0.2, 0.5, 0.7, 0.8, 1.0)] == [6, 6, 4, 4, 2, 0, 0]
    probs = [Problem(str(i), "q", "1", pass_rate=r) for i, r in enumerate([0.1, 0.3, 0.9, 0.65])]
    probs.append(Problem("u", "q", "1"))
    out = balance(probs)
    counts = {p.id: sum(q.id == p.id for q in out) for p in probs}
    assert counts == {"0": 6, "1": 4, "2": 0, "3": 2, "u": 1}
    assert balance(probs, [(0.0, 1.0001, 1)]) == probs


def test_prompt_rendering_plain_and_chat():
    assert render("What is 2+2?", None) == "Question: What is 2+2?\nAnswer: "
    cfg = PromptConfig(plain_template="Q: {question}\nA:")
    assert render("x", None, cfg) == "Q: x\nA:"

    class Tok:
        chat_template = "{% for m in messages %}<{{m.role}}>{{m.content}}{% endfor %}<assistant>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    out = render("What is 2+2?", Tok())
    assert out.startswith("<system>Please reason step by step") and "<user>What is 2+2?" in out


def test_first_error_locates_the_wrong_number_and_step():
    sol = "12+30=42,42-5=37. \\boxed{37}"
    assert curriculum.first_error(sol, sol) is None
    assert curriculum.first_error("12+30=42,42-5=3", sol) is None  # stopped early, no wrong step
    r = "12+30=45,45-5=40. \\boxed{40}"  # a wrong result in step 1
    (n, s) = curriculum.first_error(r, sol)
    assert r[n[0]:n[1]] == "45" and r[s[0]:s[1]] == "12+30=45"
    r = "12+30=42,42-6=36. \\boxed{36}"  # a wrong operand in step 2
    (n, s) = curriculum.first_error(r, sol)
    assert r[n[0]:n[1]] == "6" and r[s[0]:s[1]] == "42-6=36"
    r = "12+30=42,42-5=37. \\boxed{38}"  # a wrong copy of the answer
    (n, s) = curriculum.first_error(r, sol)
    assert r[n[0]:n[1]] == "38"
    r = "12-30=42"  # a wrong operator: the character itself
    (n, s) = curriculum.first_error(r, sol)
    assert r[n[0]:n[1]] == "-" and r[s[0]:s[1]] == "12-30=42"
