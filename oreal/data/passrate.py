"""`oreal data passrate`: measure each question's pass rate with a policy (K samples) and write
the dataset back out with `pass_rate` filled in, ready for difficulty balancing."""
from __future__ import annotations

import sys

from .prompts import PromptConfig
from .records import DataError
from .registry import load_list
from .loaders import save_problems


def add_parser(dsub) -> None:
    p = dsub.add_parser("passrate", help="measure pass rates with a policy and write a copy")
    p.add_argument("source")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="JSONL written with pass_rate per problem")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--plain-prompt", action="store_true", help="no chat template (tiny models)")
    p.set_defaults(func=run)


def measure_pass_rates(problems, engine, tokenizer, verifier, k, sampling, prompt, batch=64, seed=0):
    from ..evaluation import sample_and_grade

    for p, _, verdicts in sample_and_grade(engine, tokenizer, problems, verifier, k, sampling, prompt,
                                           seed, batch):
        p.pass_rate = sum(v.correct for v in verdicts) / k
    return problems


def run(args) -> int:
    from ..models import load_policy, load_tokenizer
    from ..rollout import SamplingConfig, make_engine
    from ..verify import Verifier

    try:
        problems = load_list(args.source, data_dir_=args.data_dir)
    except DataError as e:
        print(f"oreal data passrate: {e}", file=sys.stderr)
        return 1
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
