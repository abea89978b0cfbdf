"""One `adaptserve bench` invocation: start the gateway (and its vLLM child, or front
`--upstream` servers), make the tenants and adapters, run the chosen scenarios in order
and write the report after each one (an interrupted run keeps what it measured). The
gateway and engine start with the first scenario that needs them: `routing` brings its
own gateways and simulated engines (`routing.py`), `embeddings` its own gateway with an
embedding model beside the LLM (`embeddings.py`)."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adaptserve.bench import OWN_SERVER, SCENARIOS, SIMULATED, report
from adaptserve.bench.classify_race import race
from adaptserve.bench.embeddings import EmbeddingsPlan, run_embeddings
from adaptserve.bench.fleet import Fleet, build_fleet, make_adapters
from adaptserve.bench.routing import RoutingPlan, run_routing
from adaptserve.bench.scenarios import (
    Load,
    adapter_scaling,
    engine_shape,
    gateway_vs_direct,
    latency_vs_load,
    versus_peft,
)
from adaptserve.bench.served import ADMIN_KEY, KEY, Process, Served, plain_engine
from adaptserve.upstream.supervisor import free_port

# The engine of scenario "shape": LoRA layers only on the benchmark adapters' modules.
TUNED_ENGINE = {"max_lora_rank": 8, "lora_target_modules": ["q_proj", "v_proj"]}


@dataclass
class Plan:
    base: Path  # the base model folder
    models_dir: Path  # the settings' converted-models folder, shared with the servers started
    out: Path
    templates: Path
    scenarios: tuple[str, ...] = SCENARIOS
    load: Load = field(default_factory=Load)
    rounds: int = 2
    adapter_counts: tuple[int, ...] = (1, 4, 16, 64)
    peft_counts: tuple[int, ...] = (1, 16)
    tenants: int = 4
    rank: int = 8
    load_fractions: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)  # of the closed-loop request rate
    classify_inputs: int = 128
    upstreams: tuple[str, ...] = ()
    served_model_name: str | None = None
    work_dir: Path | None = None
    vllm_args: tuple[str, ...] = ()  # more flags for every engine the harness starts
    routing: RoutingPlan = field(default_factory=RoutingPlan)
    embeddings: EmbeddingsPlan = field(default_factory=EmbeddingsPlan)
    gateway_settings: dict[str, Any] = field(
        default_factory=lambda: {
            "base_via_zero_adapter": False,
            "max_resident_adapters": 16,
            "vllm": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 16},
        }
    )

    def __post_init__(self) -> None:
        if self.vllm_args:
            vllm = self.gateway_settings["vllm"]
            vllm["extra_args"] = [*vllm.get("extra_args", []), *self.vllm_args]


@dataclass
class Bench:
    """What the scenarios run against: the gateway with the default engine and its fleet,
    and (for "shape" and "peft") a second one whose engine is shaped to the adapters."""

    plan: Plan
    work: Path
    served: Served
    direct: str
    fleet: Fleet
    tuned: Served | None = None
    tuned_fleet: Fleet | None = None


def run(plan: Plan, command: str) -> dict[str, Any]:
    work = plan.work_dir or Path(tempfile.mkdtemp(prefix="adaptserve-bench-"))
    result: dict[str, Any] = {"command": command, **report.environment(), "plan": _describe(plan), "scenarios": {}}
    bench: Bench | None = None
    try:
        for scenario in plan.scenarios:
            started = time.perf_counter()
            if scenario in SIMULATED:
                _say(f"{scenario}: simulated engines (work folder {work / scenario})")
                result["scenarios"][scenario] = run_routing(plan.routing, work / scenario)
            elif scenario in OWN_SERVER:
                _say(f"{scenario}: its own gateway (work folder {work / scenario})")
                folder = work / scenario
                args = (plan.embeddings, plan.base, plan.models_dir, plan.templates, folder)
                result["scenarios"][scenario] = run_embeddings(*args)
            else:
                bench = bench or _start(plan, work, result)
                _SCENARIO_RUNNERS[scenario](bench, result["scenarios"])
            _say(f"{scenario} done in {time.perf_counter() - started:.0f} s")
            report.write(result, plan.out)
    finally:
        if bench is not None:
            _stop(bench)
    return result


def _start(plan: Plan, work: Path, result: dict[str, Any]) -> Bench:
    """The gateway with its engine (or in front of `--upstream`), the fleet, and the
    tuned gateway when "shape" or "peft" is to run."""
    _say(f"starting the gateway (work folder {work})")
    served = _gateway_process(plan, work / "default", plan.gateway_settings, list(plan.upstreams))
    result["startup_s"] = served.startup_s
    bench = None
    try:
        count = max([*plan.adapter_counts, *plan.peft_counts])
        paths = make_adapters(plan.base, work / "adapters", count, plan.rank)
        fleet = build_fleet(served.url, ADMIN_KEY, paths, plan.tenants)
        engine = plan.upstreams[0] if plan.upstreams else served.vllm
        assert engine is not None, "a server without --upstream starts its own engine"
        bench = Bench(plan, work, served, engine, fleet)
        _say(f"{count} adapters over {plan.tenants} tenants ready")
        if {"shape", "peft"} & set(plan.scenarios):
            tuned_settings = {**plan.gateway_settings, "vllm": {**plan.gateway_settings["vllm"], **TUNED_ENGINE}}
            bench.tuned = _gateway_process(plan, work / "tuned", tuned_settings, [])
            bench.tuned_fleet = build_fleet(bench.tuned.url, ADMIN_KEY, paths[: max(plan.peft_counts)], plan.tenants)
            result["tuned_engine"] = tuned_settings["vllm"]
        return bench
    except BaseException:
        if bench is None:
            served.stop()
        else:
            _stop(bench)
        raise


def _stop(bench: Bench) -> None:
    bench.served.stop()
    if bench.tuned is not None:
        bench.tuned.stop()


def _gateway_process(plan: Plan, folder: Path, settings: dict[str, Any], upstreams: list[str]) -> Served:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    args = ["--config", str(folder / "adaptserve.yaml")] + [a for url in upstreams for a in ("--upstream", url)]
    return Served(plan.base, folder / "data", free_port(), plan.models_dir, templates=plan.templates, args=args)


def _gateway(bench: Bench, out: dict) -> None:
    plan = bench.plan
    name = plan.served_model_name or plan.base.name
    out["gateway"] = gateway_vs_direct(bench.served.url, bench.direct, name, bench.fleet, plan.load, plan.rounds)
    saturated = out["gateway"]["median"]["gateway"]["requests_per_s"]
    out["latency"] = latency_vs_load(bench.served.url, bench.fleet, plan.load, saturated, list(plan.load_fractions))


def _adapters(bench: Bench, out: dict) -> None:
    plan = bench.plan
    resident = plan.gateway_settings.get("max_resident_adapters", 8)
    counts = list(plan.adapter_counts)
    out["adapters"] = adapter_scaling(bench.served.url, ADMIN_KEY, bench.fleet, plan.load, counts, resident)


def _shape(bench: Bench, out: dict) -> None:
    """One adapter on the default engine, on the tuned one, and merged into the base
    weights on an engine without LoRA (vLLM direct)."""
    from adaptserve.training.export import merge_into_base

    assert bench.tuned is not None and bench.tuned_fleet is not None
    merged = merge_into_base(bench.plan.base, bench.fleet.adapters[0], bench.work / "merged")
    port = free_port()
    plain = plain_engine(merged, port, bench.work / "merged-vllm.log", "merged", bench.plan.vllm_args)
    try:
        urls = (bench.served.url, bench.tuned.url, f"http://127.0.0.1:{port}")
        out["shape"] = engine_shape(*urls, bench.fleet, bench.tuned_fleet, bench.plan.load, bench.plan.rounds)
    finally:
        plain.stop()


def _peft(bench: Bench, out: dict) -> None:
    plan, port = bench.plan, free_port()
    cmd = [sys.executable, "-m", "adaptserve.bench.peft_server", "--model", str(plan.base), "--port", str(port)]
    cmd += [f"--adapter=a{j}={bench.fleet.adapters[j]}" for j in range(max(plan.peft_counts))]
    peft = Process(cmd, f"http://127.0.0.1:{port}/health", bench.work / "peft_server.log")
    assert bench.tuned is not None and bench.tuned_fleet is not None
    try:
        gateways = {
            "adaptserve": (bench.served.url, bench.fleet),
            "adaptserve, tuned engine": (bench.tuned.url, bench.tuned_fleet),
        }
        url = f"http://127.0.0.1:{port}"
        out["peft"] = versus_peft(gateways, url, plan.load, list(plan.peft_counts), plan.rounds)
        out["peft_startup_s"] = peft.startup_s
    finally:
        peft.stop()


def _lora(bench: Bench, out: dict) -> None:
    """The engine plugin: a stock LoRA engine and one without LoRA beside the harness's
    gateway (whose engine runs the plugin)."""
    from adaptserve.bench import lora_ops
    from adaptserve.datasets import load_dataset

    plan = bench.plan
    log = (bench.work / "default" / "data" / "logs" / "vllm.log").read_text(errors="replace")
    if plan.upstreams or "grouped CPU LoRA ops active" not in log:
        raise RuntimeError("scenario lora needs the harness's own engine with the plugin active")
    stock_vllm = {**plan.gateway_settings["vllm"], "engine_plugin": False}  # `make serve` before the plugin:
    stock_settings = {**plan.gateway_settings, "base_via_zero_adapter": True, "vllm": stock_vllm}
    stock = _gateway_process(plan, bench.work / "stock", stock_settings, [])
    port = free_port()
    plain = plain_engine(plan.base, port, bench.work / "plain-vllm.log", "base", plan.vllm_args)
    try:
        stock_fleet = build_fleet(stock.url, ADMIN_KEY, bench.fleet.adapters[:64], plan.tenants)
        sides = (f"http://127.0.0.1:{port}", (stock.url, stock_fleet), (bench.served.url, bench.fleet))
        out["lora"] = lora_ops.throughput(*sides, plan.load, plan.rounds)
        plain.stop()
        lora_ops.add_student(bench.served.url, plan.base, plan.templates, bench.work / "student")
        texts = load_dataset("rotten-tomatoes", "test")[: plan.classify_inputs + 4]
        urls = {"stock": stock.url, "plugin": bench.served.url}
        out["lora"]["templates"] = lora_ops.templates(urls, texts, plan.load.concurrency, plan.rounds)
    finally:
        stock.stop()
        plain.stop()


def _classify(bench: Bench, out: dict) -> None:
    from adaptserve.datasets import load_dataset
    from adaptserve.templates.spec import load_document

    plan = bench.plan
    spec = load_document((plan.templates / "sentiment.yaml").read_text())
    pool = load_dataset("rotten-tomatoes", "test")
    n, concurrency = plan.classify_inputs, plan.load.concurrency
    out["classify"] = race(bench.served.url, KEY, spec, pool, "text", n, concurrency, plan.rounds)


_SCENARIO_RUNNERS = {
    "gateway": _gateway,
    "adapters": _adapters,
    "shape": _shape,
    "peft": _peft,
    "classify": _classify,
    "lora": _lora,
}


def _describe(plan: Plan) -> dict[str, Any]:
    described = {k: v for k, v in vars(plan).items() if k not in ("load", "routing", "embeddings")}
    described["load"] = {k: v for k, v in vars(plan.load).items() if k != "prompts"}
    described["routing"] = asdict(plan.routing)
    described["embeddings"] = asdict(plan.embeddings)
    described["load"]["prompts"] = f"{len(plan.load.prompts)} dataset texts" if plan.load.prompts else "synthetic"
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in described.items()}


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
