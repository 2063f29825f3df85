"""`oreal eval`: pass@1, pass@k and maj@k of a model on a registry benchmark or a data file."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (pass@1, pass@k, maj@k)")
    p.add_argument("--model", required=True, help="HF model directory, or 'default'")
    p.add_argument("--data", required=True, help="registry name (math500, curriculum_test, ...) or path")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--extract", default=None, help="override the data's extraction mode")
    p.add_argument("--engine", default="auto", help="auto: hf_sampler on CPU, hf_device on GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import PromptConfig, load_list
    from ..evaluation import evaluate
    from ..models import DEFAULT_MODEL, load_policy, load_tokenizer
    from ..rollout import SamplingConfig, make_engine
    from ..verify import Verifier

    problems = load_list(args.data, data_dir_=args.data_dir)
    if args.limit:
        problems = problems[: args.limit]
    if args.extract:
        for p in problems:
            p.extract = args.extract
    tok = load_tokenizer(args.model)
    model = load_policy(args.model, args.dtype, args.device)
    # The embedded model was trained on a plain prompt; chat models get their chat template.
    prompt = (PromptConfig(system=None, use_chat_template=False) if args.model == DEFAULT_MODEL
              else PromptConfig())
    max_new = args.max_new_tokens or (64 if args.model == DEFAULT_MODEL else 1024)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=max_new)
    with Verifier(workers=2) as v:
        res = evaluate(make_engine(args.engine, model, tok), tok, problems, v, k=args.k,
                       sampling=sampling, prompt=prompt, seed=args.seed, progress=True, keep_samples=5)
    res.update(model=args.model, data=args.data)
    text = json.dumps(res, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    summary = {k: res[k] for k in ("pass@1", "pass@k", "maj@k", "n", "k", "unfinished", "no_answer")}
    print(json.dumps(summary))
    return 0
