"""`oreal data show`: what the policy will see; `oreal data passrate`: pass rates measured with
a policy, written back out for difficulty balancing."""
from __future__ import annotations

import json

from . import HelpFormatter, non_negative_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect problem sets, measure pass rates", formatter_class=HelpFormatter)
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    s = dsub.add_parser("show", help="record count, rendered prompts and gold answers", formatter_class=HelpFormatter)
    s.add_argument("source", help="registry name (math500, gsm8k, curriculum_test, ...) or a path")
    s.add_argument("--data-dir", default=None, help="where registry benchmarks live")
    s.add_argument("--preset", default=None, help="field names of the file (oreal, math, gsm8k, ...)")
    s.add_argument("--n", type=positive_int, default=3, help="how many examples to show")
    s.add_argument("--model", default=None, help="render with this model's tokenizer/chat template")
    s.add_argument("--json", action="store_true", help="one JSON object instead of text")
    s.set_defaults(func=show)
    p = dsub.add_parser("passrate", help="measure pass rates with a policy and write a copy",
                        formatter_class=HelpFormatter)
    p.add_argument("source", help="registry name or a path")
    p.add_argument("--model", required=True, help="HF model directory, or 'default'")
    p.add_argument("--out", required=True, help="JSONL written with pass_rate per problem")
    p.add_argument("--k", type=positive_int, default=8, help="samples per problem")
    p.add_argument("--temperature", type=non_negative_float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=positive_int, default=1024, help="response length cap")
    p.add_argument("--data-dir", default=None, help="where registry benchmarks live")
    p.add_argument("--preset", default=None, help="field names of the file (oreal, math, gsm8k, ...)")
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
                 "prompt": render(p.prompt, tok, PromptConfig()),
                 "skills": p.skills, "extract": p.extract} for p in res.problems[: args.n]]
    if args.json:
        print(json.dumps({"name": args.source, "count": len(res.problems),
                          "skipped": res.skipped, "examples": examples}, ensure_ascii=False))
        return 0
    print(f"{args.source}: {len(res.problems)} problems"
          + (f" ({len(res.skipped)} bad rows skipped)" if res.skipped else ""))
    if not res.problems:
        from ..errors import DataError

        first = f"; the first: {res.skipped[0]}" if res.skipped else ""
        raise DataError(f"{args.source}: no usable records{first}")
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
    from ..preflight import writable_file
    from ..verify import Verifier

    writable_file(args.out, f"--out {args.out}")  # before the work, not after it
    problems = load_list(args.source, data_dir_=args.data_dir, preset=args.preset)
    tok = load_tokenizer(args.model)
    engine = make_engine("hf_sampler", load_policy(args.model), tok)
    prompt = PromptConfig(system=None, use_chat_template=False) if args.plain_prompt else PromptConfig()
    sampling = SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    with Verifier(workers=2) as v:
        measure_pass_rates(problems, engine, tok, v, args.k, sampling, prompt, progress=True)
    save_problems(problems, args.out)
    mean = sum(p.pass_rate for p in problems) / len(problems)
    print(f"wrote {len(problems)} problems with pass rates (mean {mean:.3f}) to {args.out}")
    return 0
