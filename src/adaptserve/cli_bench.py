"""`adaptserve bench`: the throughput benchmark harness's command line (the harness
itself is `adaptserve.bench`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from adaptserve.bench import SCENARIOS
from adaptserve.config import Settings


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="throughput benchmarks: gateway, adapters, peft baseline, classify")
    bench.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, run in order")
    bench.add_argument("--model", default="default", help='"default" or a model folder (the base)')
    bench.add_argument("--requests", type=int, default=24, help="requests per measured side")
    bench.add_argument("--concurrency", type=int, default=8, help="closed-loop users")
    bench.add_argument("--input-words", type=int, default=32, help="synthetic prompt length (about 1 token a word)")
    bench.add_argument(
        "--prompts", default="synthetic", choices=("synthetic", "rotten-tomatoes", "trec"), help="prompt source"
    )
    bench.add_argument("--max-tokens", type=int, default=16, help="every answer's length")
    bench.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side-by-side comparison")
    bench.add_argument("--adapters", type=_ints, default=(1, 4, 16, 64), help="adapter counts of scenario 2")
    bench.add_argument("--peft-adapters", type=_ints, default=(1, 16), help="adapter counts of scenario 3")
    bench.add_argument("--tenants", type=int, default=4)
    bench.add_argument("--rank", type=int, default=8, help="the benchmark adapters' LoRA rank (q and v)")
    bench.add_argument("--classify-inputs", type=int, default=128, help="inputs per round of scenario 4")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--upstream", action="append", default=[], help="front these vLLM servers (GPU runs)")
    bench.add_argument("--served-model-name", help="the base model's name at --upstream (default: the folder name)")
    bench.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        help="a flag for every engine the harness starts, e.g. --vllm-arg=--gpu-memory-utilization=0.25",
    )
    bench.add_argument("--work-dir", type=Path, help="adapters and logs (with --upstream: a folder vLLM can read)")
    bench.add_argument("--templates", type=Path, default=Path("templates"), help="holds sentiment.yaml")
    bench.add_argument("--out", type=Path, default=Path("benchmarks/results/bench"))
    bench.add_argument("--config", type=Path)
    bench.set_defaults(run_bench=True)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from adaptserve.bench.run import Plan, run
    from adaptserve.bench.scenarios import Load
    from adaptserve.models import resolve_model

    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        sys.exit(f"adaptserve: unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    prompts: tuple[str, ...] = ()
    if args.prompts != "synthetic":
        from adaptserve.adapt.data import load_dataset

        prompts = tuple(e.text for e in load_dataset(args.prompts, "train"))
    load = Load(args.requests, args.concurrency, args.input_words, args.max_tokens, args.seed, prompts)
    plan = Plan(
        base=resolve_model(args.model, settings.resolved_models_dir),
        models_dir=settings.resolved_models_dir,
        out=args.out,
        templates=args.templates.resolve(),
        scenarios=scenarios,
        load=load,
        rounds=args.rounds,
        adapter_counts=args.adapters,
        peft_counts=args.peft_adapters,
        tenants=args.tenants,
        rank=args.rank,
        classify_inputs=args.classify_inputs,
        upstreams=tuple(args.upstream),
        served_model_name=args.served_model_name,
        work_dir=args.work_dir,
        vllm_args=tuple(args.vllm_arg),
    )
    run(plan, "adaptserve bench " + shlex.join(sys.argv[2:]))
    for path in sorted(args.out.iterdir()):
        print(f"wrote {path}")
    print((args.out / "bench.md").read_text())
    return 0
