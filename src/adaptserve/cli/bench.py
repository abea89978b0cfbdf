"""`adaptserve bench`: the throughput benchmark harness's command line (the harness
itself is `adaptserve.bench`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from adaptserve.bench import OWN_SERVER, SCENARIOS, SIMULATED
from adaptserve.config import Settings


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    _add_bench(commands, common)
    _add_soak(commands, common)


def _add_bench(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = commands.add_parser(
        "bench", parents=[common], help="throughput benchmarks: gateway, adapters, peft baseline, classify, routing"
    )
    bench.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, run in order; also {', '.join(SIMULATED)} (simulated engines) and "
        f"{', '.join(OWN_SERVER)} (its own gateway with MiniLM beside the LLM), not in the default",
    )
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
    bench.add_argument(
        "--classify-inputs", type=int, default=128, help="inputs per round of scenario 4 and of embeddings' templates"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--routing-requests", type=int, default=1000, help="routing: measured requests per mode")
    bench.add_argument("--routing-concurrency", type=int, default=24, help="routing: streaming clients")
    bench.add_argument(
        "--routing-resident", type=int, default=8, help="routing: adapters the gateway keeps loaded per engine"
    )
    bench.add_argument(
        "--routing-slots",
        type=int,
        default=2,
        help="routing: adapters per engine batch (vLLM's --max-loras), both modes",
    )
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
    bench.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from adaptserve.bench.embeddings import EmbeddingsPlan
    from adaptserve.bench.routing import RoutingPlan
    from adaptserve.bench.run import Plan, run
    from adaptserve.bench.scenarios import Load
    from adaptserve.default_model import resolve_model

    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    known = SCENARIOS + SIMULATED + OWN_SERVER
    unknown = set(scenarios) - set(known)
    if unknown:
        sys.exit(f"adaptserve: unknown scenarios {sorted(unknown)}; choose from {', '.join(known)}")
    on_engine = set(scenarios) - set(SIMULATED)  # only these need the model (converted on first use)
    base = resolve_model(args.model, settings.resolved_models_dir) if on_engine else Path(args.model)
    prompts: tuple[str, ...] = ()
    if args.prompts != "synthetic":
        from adaptserve.datasets import load_dataset

        prompts = tuple(e.text for e in load_dataset(args.prompts, "train"))
    load = Load(args.requests, args.concurrency, args.input_words, args.max_tokens, args.seed, prompts)
    plan = Plan(
        base=base,
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
        routing=RoutingPlan(
            requests=args.routing_requests,
            concurrency=args.routing_concurrency,
            resident=args.routing_resident,
            slots=args.routing_slots,
            rounds=args.rounds,
            seed=args.seed,
        ),
        embeddings=EmbeddingsPlan(classify_inputs=args.classify_inputs, rounds=args.rounds, seed=args.seed),
    )
    run(plan, "adaptserve bench " + shlex.join(sys.argv[2:]))
    for path in sorted(args.out.iterdir()):
        print(f"wrote {path}")
    print((args.out / "bench.md").read_text())
    return 0


def _add_soak(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    soak = commands.add_parser(
        "soak", parents=[common], help="a bounded soak test: mixed calls from a few tenants, errors and memory"
    )
    soak.add_argument("--minutes", type=float, default=10.0, help="how long (it stops by itself)")
    soak.add_argument("--max-requests", type=int, default=100_000)
    soak.add_argument("--users", type=int, default=4, help="concurrent callers")
    soak.add_argument("--tenants", type=int, default=3)
    soak.add_argument("--adapters", type=int, default=2, help="rank-8 adapters the tenants' aliases point at")
    soak.add_argument("--window-s", type=float, default=60.0, help="the report's time window")
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument("--templates", type=Path, default=Path("templates"), help="holds sentiment.yaml")
    soak.add_argument("--out", type=Path, default=Path("benchmarks/results/soak"))
    soak.set_defaults(run=run_soak)


def run_soak(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import tempfile

    from adaptserve.bench import soak
    from adaptserve.bench.fleet import make_adapters
    from adaptserve.bench.run import free_port
    from adaptserve.bench.served import ADMIN_KEY, Served
    from adaptserve.default_model import resolve_model

    base = resolve_model("default", settings.resolved_models_dir)
    plan = soak.SoakPlan(args.minutes * 60, args.max_requests, args.users, args.tenants, args.window_s, args.seed)
    with tempfile.TemporaryDirectory(prefix="adaptserve-soak-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        server = Served(base, work / "data", free_port(), settings.resolved_models_dir, templates=args.templates)
        try:
            names = _push_adapters(server.url, ADMIN_KEY, make_adapters(base, work / "adapters", args.adapters, rank=8))
            keys = asyncio.run(soak.setup_tenants(server.url, ADMIN_KEY, args.tenants, names))
            result = asyncio.run(soak.run_soak(server.url, ADMIN_KEY, keys, server.process.pid, plan))
        finally:
            server.stop()
    soak.write(result, args.out)
    print(soak.markdown(result))
    return 1 if result["errors"] else 0


def _push_adapters(url: str, admin_key: str, folders: list[Path]) -> list[str]:
    from adaptserve_client import Client

    with Client(url, admin_key, timeout=600) as client:
        for j, folder in enumerate(folders):
            client.admin.adapters.push(folder, f"soak-a{j}")
    return [f"soak-a{j}" for j in range(len(folders))]
