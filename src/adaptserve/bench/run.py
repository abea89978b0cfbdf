"""One `adaptserve bench` invocation: start the gateway (and its vLLM child, or front
`--upstream` servers), make the tenants and adapters, run the chosen scenarios in order
and write the report after each one (an interrupted run keeps what it measured)."""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adaptserve.bench import report
from adaptserve.bench.classify_race import race
from adaptserve.bench.fleet import build_fleet
from adaptserve.bench.scenarios import (
    Load,
    adapter_scaling,
    engine_shape,
    gateway_vs_direct,
    latency_vs_load,
    versus_peft,
)
from adaptserve.bench.served import ADMIN_KEY, KEY, Process, Served, plain_engine

# The engine of scenario "shape": LoRA layers only on the benchmark adapters' modules.
TUNED_ENGINE = {"max_lora_rank": 8, "lora_target_modules": ["q_proj", "v_proj"]}
SCENARIOS = ("gateway", "adapters", "shape", "peft", "classify")


@dataclass
class Plan:
    base: Path  # the base model folder
    out: Path
    templates: Path
    scenarios: tuple[str, ...] = SCENARIOS
    load: Load = field(default_factory=Load)
    rounds: int = 2
    adapter_counts: tuple[int, ...] = (1, 4, 16, 64)
    peft_counts: tuple[int, ...] = (1, 16)
    tenants: int = 4
    rank: int = 8
    load_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    classify_inputs: int = 128
    upstreams: tuple[str, ...] = ()
    served_model_name: str | None = None
    work_dir: Path | None = None
    gateway_settings: dict[str, Any] = field(
        default_factory=lambda: {
            "base_via_zero_adapter": False,
            "max_resident_adapters": 16,
            "vllm": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 16},
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(plan: Plan, command: str) -> dict[str, Any]:
    work = plan.work_dir or Path(tempfile.mkdtemp(prefix="adaptserve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    config = work / "adaptserve.yaml"
    config.write_text(yaml.safe_dump(plan.gateway_settings))
    args = ["--config", str(config)] + [a for url in plan.upstreams for a in ("--upstream", url)]
    result: dict[str, Any] = {"command": command, **report.environment(), "plan": _describe(plan), "scenarios": {}}
    _say(f"starting the gateway (work folder {work})")
    served = Served(plan.base, work / "data", free_port(), templates=plan.templates, args=args)
    result["startup_s"] = served.startup_s
    try:
        direct = plan.upstreams[0] if plan.upstreams else served.vllm
        count = max([*plan.adapter_counts, *plan.peft_counts])
        fleet = build_fleet(served.url, ADMIN_KEY, plan.base, work / "adapters", count, plan.tenants, plan.rank)
        _say(f"{count} adapters over {plan.tenants} tenants ready")
        for scenario in plan.scenarios:
            started = time.perf_counter()
            _SCENARIO_RUNNERS[scenario](plan, result["scenarios"], served, direct, fleet)
            _say(f"{scenario} done in {time.perf_counter() - started:.0f} s")
            report.write(result, plan.out)
    finally:
        served.stop()
    return result


def _gateway(plan: Plan, out: dict, served: Served, direct: str, fleet: Any) -> None:
    name = plan.served_model_name or plan.base.name
    out["gateway"] = gateway_vs_direct(served.url, direct, name, fleet, plan.load, plan.rounds)
    saturated = out["gateway"]["median"]["gateway"]["requests_per_s"]
    out["latency"] = latency_vs_load(served.url, fleet, plan.load, saturated, list(plan.load_fractions))


def _adapters(plan: Plan, out: dict, served: Served, direct: str, fleet: Any) -> None:
    resident = plan.gateway_settings.get("max_resident_adapters", 8)
    out["adapters"] = adapter_scaling(served.url, ADMIN_KEY, fleet, plan.load, list(plan.adapter_counts), resident)


def _shape(plan: Plan, out: dict, served: Served, direct: str, fleet: Any) -> None:
    """A second gateway whose engine has LoRA layers only where the adapters need them
    (rank 8, q and v), against the default engine (rank 16, every module)."""
    tuned = {**plan.gateway_settings, "vllm": {**plan.gateway_settings["vllm"], **TUNED_ENGINE}}
    work = served.log.parent.parent / "tuned"
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "adaptserve.yaml").write_text(yaml.safe_dump(tuned))
    from adaptserve.adapt.export import merge_into_base

    merged = merge_into_base(plan.base, fleet.adapters[0], work / "merged")
    other = Served(plan.base, work / "data", free_port(), args=["--config", str(work / "adaptserve.yaml")])
    port = free_port()
    plain = plain_engine(merged, port, work / "merged-vllm.log", "merged")
    try:
        fleet2 = build_fleet(other.url, ADMIN_KEY, plan.base, work / "adapters", 1, plan.tenants, plan.rank)
        urls = (served.url, other.url, f"http://127.0.0.1:{port}")
        out["shape"] = engine_shape(*urls, fleet, fleet2, plan.load, plan.rounds) | {"tuned": tuned}
    finally:
        other.stop()
        plain.stop()


def _peft(plan: Plan, out: dict, served: Served, direct: str, fleet: Any) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "adaptserve.bench.peft_server", "--model", str(plan.base), "--port", str(port)]
    cmd += [f"--adapter=a{j}={fleet.adapters[j]}" for j in range(max(plan.peft_counts))]
    work = served.log.parent
    peft = Process(cmd, f"http://127.0.0.1:{port}/health", work / "peft_server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        out["peft"] = versus_peft(served.url, url, fleet, plan.load, list(plan.peft_counts), plan.rounds)
        out["peft_startup_s"] = peft.startup_s
    finally:
        peft.stop()


def _classify(plan: Plan, out: dict, served: Served, direct: str, fleet: Any) -> None:
    from adaptserve.adapt.data import load_dataset
    from adaptserve.templates.spec import load_document

    spec = load_document((plan.templates / "sentiment.yaml").read_text())
    pool = load_dataset("rotten-tomatoes", "test")
    n, concurrency = plan.classify_inputs, plan.load.concurrency
    out["classify"] = race(served.url, KEY, spec, pool, "text", n, concurrency, plan.rounds)


_SCENARIO_RUNNERS = {
    "gateway": _gateway,
    "adapters": _adapters,
    "shape": _shape,
    "peft": _peft,
    "classify": _classify,
}


def _describe(plan: Plan) -> dict[str, Any]:
    described = {k: v for k, v in vars(plan).items() if k != "load"}
    described["load"] = vars(plan.load)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in described.items()}


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
