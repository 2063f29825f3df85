"""`oreal eval`: pass@1, pass@k and maj@k of a model on a registry benchmark or a data file.

`--run RUN_DIR` evaluates what a training run trained, as the run evaluated it: its final policy,
prompt, sampling, held-out set, k and seed come from the run's config.yaml; any flag given
explicitly wins."""
from __future__ import annotations

import argparse
import json
import sys

from ..rollout.registry import ENGINE_NAMES
from . import HelpFormatter, non_negative_float, positive_int, unit_float

DEFAULT_MAX_NEW_TOKENS = 1024  # when neither --max-new-tokens nor the run sets it: at most what the engine fits
# (oreal.rollout.lengths.AUTO_CAP; a literal here: building the parser imports no torch)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (pass@1, pass@k, maj@k)", formatter_class=HelpFormatter,
                       description=__doc__)
    src = p.add_argument_group("what to evaluate (--run, or --model and --data)")
    src.add_argument("--run", default=None, help="a training run directory: its final policy and settings")
    src.add_argument("--model", default=None, help="HF model directory, or 'default' (the embedded model)")
    src.add_argument("--data", default=None, help="registry name (math500, curriculum_test, ...) or a path")
    src.add_argument("--data-dir", default=None, help="where registry benchmarks live")
    src.add_argument("--preset", default=None, help="field names of the data file (e.g. oreal, math, gsm8k)")
    src.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N problems (none: all)")
    s = p.add_argument_group("sampling (none: the run's settings, else the values shown)")
    s.add_argument("--k", type=positive_int, default=None, help="samples per problem [1]")
    s.add_argument("--temperature", type=non_negative_float, default=None, help="0 is greedy [1.0]")
    s.add_argument("--top-p", type=unit_float, default=None, help="[1.0]")
    s.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"[{DEFAULT_MAX_NEW_TOKENS}, or what the engine's max_model_len leaves after the longest "
                        f"prompt, if less; a value given that does not fit is an error]")
    s.add_argument("--seed", type=int, default=None, help="[12345, the seed training evaluates with]")
    s.add_argument("--engine", default=None, choices=ENGINE_NAMES,
                   help="rollout engine [auto: hf_sampler on CPU, hf_device on GPU]")
    pr = p.add_argument_group("prompt (none: the run's, else a chat template when the tokenizer has one)")
    pr.add_argument("--prompt-system", default=None, help="system message for chat templates ('' for none)")
    pr.add_argument("--prompt-template", default=None,
                    help="a plain template with {question}; implies --no-chat-template")
    pr.add_argument("--chat-template", default=None, action=argparse.BooleanOptionalAction,
                    help="use the tokenizer's chat template when it has one")
    o = p.add_argument_group("output")
    o.add_argument("--extract", default=None, help="override the data's extraction mode (boxed, auto, gsm8k)")
    o.add_argument("--dtype", default=None, help="float32, bfloat16, ... [float32]")
    o.add_argument("--device", default=None, help="cpu, cuda, cuda:1 [cpu]")
    o.add_argument("--out", default=None, help="write the full results JSON here (checked before the work)")
    p.set_defaults(func=run)


def _plan(args) -> dict:
    """Every setting of the evaluation: the run's config (if --run), then the explicit flags."""
    from ..data import PromptConfig
    from ..errors import ConfigError
    from ..evaluation import EVAL_SEED

    plan = dict(model=args.model, data=args.data, data_dir=args.data_dir, preset=args.preset, limit=args.limit,
                k=1, temperature=1.0, top_p=1.0, max_new_tokens=None, seed=EVAL_SEED, engine="auto",
                dtype="float32", device="cpu", prompt=PromptConfig(), options=None)
    cfg = None
    if args.run:
        from pathlib import Path

        from ..training.config import build_config

        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"--run {run}: no config.yaml there; is it a training run directory?")
        cfg = build_config(str(run / "config.yaml"), [])
        policy = run / "final" / "policy"
        if not (policy / "config.json").is_file():
            raise ConfigError(f"--run {run}: no final/policy (the run has not finished); evaluate a checkpoint "
                              f"with --model {run}/checkpoints/step_N/policy --data ...")
        plan.update(model=str(policy), data=cfg.eval_data, data_dir=cfg.data_dir, limit=cfg.eval_limit,
                    k=cfg.eval_k, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                    max_new_tokens=None if cfg.sampling.max_new_tokens == "auto" else cfg.sampling.max_new_tokens,
                    engine=cfg.engine, dtype=cfg.dtype, device=cfg.device, prompt=cfg.prompt)
    for key in ("model", "data", "data_dir", "preset", "limit", "k", "temperature", "top_p", "max_new_tokens",
                "seed", "engine", "dtype", "device"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    pc = plan["prompt"]
    plan["prompt"] = PromptConfig(
        system=(args.prompt_system or None) if args.prompt_system is not None else pc.system,
        use_chat_template=(False if args.prompt_template is not None else
                           args.chat_template if args.chat_template is not None else pc.use_chat_template),
        plain_template=args.prompt_template if args.prompt_template is not None else pc.plain_template)
    if args.run and not plan["data"]:
        raise ConfigError(f"--run {args.run}: the run has no eval_data; name the problems with --data")
    if not plan["model"] or not plan["data"]:
        raise ConfigError("give --run RUN_DIR, or --model and --data")
    if "{question}" not in plan["prompt"].plain_template:
        raise ConfigError("--prompt-template must contain {question}")
    from ..rollout import check_installed, options_class, resolve_engine

    check_installed(plan["engine"])
    name = resolve_engine(plan["engine"], plan["device"])
    if cfg is not None and options_class(name):  # the engine's own settings as the run had them (its vllm.*)
        plan["options"] = getattr(cfg, name)
    return plan


def run(args) -> int:
    from ..preflight import check_device, writable_file

    plan = _plan(args)
    check_device(plan["device"])
    if args.out:
        writable_file(args.out, f"--out {args.out}")
    from transformers import AutoConfig

    from ..data import load_list, render
    from ..evaluation import evaluate
    from ..preflight import write_text
    from ..models import load_policy, load_tokenizer, resolve_model_path
    from ..rollout import EngineSetup, SamplingConfig, engine_class, make_engine
    from ..rollout.lengths import check_prompts_fit, fit_max_new_tokens, token_lengths, window_of
    from ..verify import Verifier

    model_dir = resolve_model_path(plan["model"])
    engine_class(plan["engine"], plan["device"]).preflight(model_dir)  # before loading
    problems = load_list(plan["data"], data_dir_=plan["data_dir"], preset=plan["preset"])
    if plan["limit"]:
        problems = problems[: plan["limit"]]
    if args.extract:
        for p in problems:
            p.extract = args.extract
    tok = load_tokenizer(plan["model"])
    lengths = token_lengths(tok, [render(p.prompt, tok, plan["prompt"]) for p in problems])
    # prompts that cannot fit the model at all: refused from its config.json, before the weights load
    check_prompts_fit(lengths, window_of(AutoConfig.from_pretrained(model_dir), plan["options"]))
    model = load_policy(plan["model"], plan["dtype"], plan["device"])
    with Verifier(workers=2) as v:
        engine = make_engine(plan["engine"], model, tok, EngineSetup(model_dir, plan["options"], dtype=plan["dtype"]))
        try:
            # a value given (by the flag or the run) is kept, and refused by the engine if it does not fit;
            # auto (none given) is what the engine's max_model_len leaves after the longest prompt, at most
            # 1024, said in one line
            plan["max_new_tokens"], said = fit_max_new_tokens(plan["max_new_tokens"], lengths, engine.max_model_len,
                                                              key="max_new_tokens", how="--max-new-tokens sets it")
            if said:
                print(said, file=sys.stderr)
            sampling = SamplingConfig(temperature=plan["temperature"], top_p=plan["top_p"],
                                      max_new_tokens=plan["max_new_tokens"])
            res = evaluate(engine, tok, problems, v, k=plan["k"], sampling=sampling, prompt=plan["prompt"],
                           seed=plan["seed"], progress=True, keep_samples=5)
        finally:
            engine.close()
    res.update(model=plan["model"], data=plan["data"], seed=plan["seed"], max_new_tokens=plan["max_new_tokens"])
    if args.out:
        write_text(args.out, json.dumps(res, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    summary = {k: res[k] for k in ("pass@1", "pass@k", "maj@k", "n", "k", "unfinished", "no_answer")}
    print(json.dumps(summary))
    return 0
