"""`oreal data show`: what the policy will see; `oreal data passrate`: pass rates measured with
a policy, written back out for difficulty balancing."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect problem sets, measure pass rates")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("show", help="record count, rendered prompts and gold answers")
    s.add_argument("source", help="registry name (math500, gsm8k, curriculum_test, ...) or a path")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--preset", default=None)
    s.add_argument("--n", type=int, default=3, help="how many examples to show")
    s.add_argument("--model", default=None, help="render with this model's tokenizer/chat template")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=show)
    p = dsub.add_parser("passrate", help="measure pass rates with a policy and write a copy")
    p.add_argument("source")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="JSONL written with pass_rate per problem")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--plain-prompt", action="store_true", help="no chat template (tiny models)")
    p.set_defaults(func=passrate)


def show(args) -> int:
    from ..data import PromptConfig, load, render

    res = load(args.source, args.data_dir, preset=args.preset, skip_bad=True)
    tok = None
    if args.model:
        from ..models import load_tokenizer

        tok = load_tokenizer(args.model)
    examples = [{"id": p.id, "question": p.question, "gold": p.gold,
                 "prompt": render(p.question, tok, PromptConfig()),
                 "skills": p.skills, "extract": p.extract} for p in res.problems[: args.n]]
    if args.json:
        print(json.dumps({"name": args.source, "count": len(res.problems),
                          "skipped": res.skipped, "examples": examples}, ensure_ascii=False))
        return 0
    print(f"{args.source}: {len(res.problems)} problems"
          + (f" ({len(res.skipped)} bad rows skipped)" if res.skipped else ""))
    for ex in examples:
        print("-" * 60)
        print(ex["prompt"])
        print(f"[gold: {ex['gold']}]  [extract: {ex['extract']}]")
    for s in res.skipped[:5]:
        print(f"skipped: {s}")
    return 0


def passrate(args) -> int:
    from ..data import PromptConfig, load_list, save_problems
    from ..evaluation import measure_pass_rates
    from ..models import load_policy, load_tokenizer
    from ..rollout import SamplingConfig, make_engine
    from ..verify import Verifier

    problems = load_list(args.source, data_dir_=args.data_dir)
    tok = load_tokenizer(args.model)
    engine = make_engine("hf_sampler", load_policy(args.model), tok)
    prompt = PromptConfig(system=None, use_chat_template=False) if args.plain_prompt else PromptConfig()
    sampling = SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    with Verifier(workers=2) as v:
        measure_pass_rates(problems, engine, tok, v, args.k, sampling, prompt)
    save_problems(problems, args.out)
    mean = sum(p.pass_rate for p in problems) / len(problems)
    print(f"wrote {len(problems)} problems with pass rates (mean {mean:.3f}) to {args.out}")
    return 0
