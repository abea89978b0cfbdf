"""The routing scenario's section of `bench.md` (`routing.py` measures): both modes'
loads, throughput and TTFT (medians over the rounds) with the picker / round robin
ratios; per round, where TTFT went and the engine that joined mid-run; issue 17's
targets met or missed."""

from __future__ import annotations

from typing import Any


def markdown(result: dict[str, Any]) -> list[str]:
    """The scenario's section of bench.md."""
    plan, t = result["plan"], result["plan"]["timing"]
    parts = [
        "## Routing: the replica picker against round robin (simulated engines)\n",
        f"**The engines are simulated** (`adaptserve.bench.sim_engine`), not vLLM: {t['max_loras']} adapters and "
        f"{t['max_num_seqs']} sequences a batch, {1000 * t['step_s']:.0f} ms a step + "
        f"{1000 * t['prefill_token_s']:.2f} ms a prompt token, an adapter load {t['load_s']} s that stalls the "
        f"engine (as vLLM's engine core does), an unload {1000 * t['unload_s']:.0f} ms. {plan['engines']} engines "
        f"(one more comes up after {plan['join_after']:.0%} of the requests), {plan['adapters']} adapters (Zipf, "
        f"s = {plan['zipf_s']}), {plan['slots']} adapter slots per engine batch, {plan['resident']} kept loaded "
        f"per engine; {plan['requests']} requests × "
        f"{plan['max_tokens']} tokens from {plan['concurrency']} streaming clients after {plan['warmup']} warm-up; "
        f"{plan['rounds']} round(s), each mode with a fresh gateway and engines, medians below.\n",
        "| mode | adapter loads / 100 requests | requests behind a load | output tok/s | TTFT p50 / p99 (ms) "
        "| end-to-end p50 / p99 (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in result["median"].items():
        parts.append(
            f"| {mode} | {m['loads_per_100_requests']:.1f} | {m['requests_behind_a_load_pct']:.1f}% | "
            f"{m['output_tokens_per_s']:.0f} | {m['ttft_p50']:.0f} / {m['ttft_p99']:.0f} | "
            f"{m['e2e_p50']:.0f} / {m['e2e_p99']:.0f} | {m['errors']:.0f} |"
        )
    if "ratio_picker_over_round_robin" in result:
        r = result["ratio_picker_over_round_robin"]
        parts.append(
            f"| picker / round robin | ×{r['loads_per_100_requests']:.2f} | | ×{r['output_tokens_per_s']:.2f} | "
            f"×{r['ttft_p50']:.2f} / ×{r['ttft_p99']:.2f} | ×{r['e2e_p50']:.2f} / ×{r['e2e_p99']:.2f} | |"
        )
    return parts + _time_table(result["rounds"], result.get("cpus")) + _join_table(result["rounds"]) + _targets(result)


_PARTS = ("gateway", "engine_queue", "first_step", "relay", "ttft")


def _time_table(rounds: list[dict[str, Any]], cpus: int | None) -> list[str]:
    parts = [
        "\nEach round; TTFT in parts, mean ms over every request / over the slowest 1% (gateway: until the engine "
        "had the request, adapter loads waited on included; engine queue: a full batch, or no adapter slot free):\n",
        "| round, mode | loads / 100 req | tok/s | TTFT p50 / p99 | gateway | engine queue | first step "
        "| back to the client | TTFT | waited for an adapter slot | engines stalled in loads (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cpu = []
    for i, round_ in enumerate(rounds, 1):
        for mode, m in round_.items():
            t = m["time"]
            cells = [f"{t[k]['mean_ms']:.0f} / {t[k]['slowest_1pct_mean_ms']:.0f}" for k in _PARTS]
            stalled = sum(e["stalled_in_loads_s"] for e in m["engines"])
            parts.append(
                f"| {i}, {mode} | {m['loads_per_100_requests']:.1f} | {m['output_tokens_per_s']:.0f} | "
                f"{m['ttft_p50']:.0f} / {m['ttft_p99']:.0f} | {' | '.join(cells)} | "
                f"{t['requests_waiting_for_an_adapter_slot_pct']:.0f}% | {stalled:.1f} |"
            )
            load = m["cpu_pct_of_one_core"]
            cpu.append(f"{load['gateway']:.0f}% + {load['clients_and_engines']:.0f}%")
    return [
        *parts,
        "\nCPU during the measured requests, % of one core (gateway + clients and engines), in the rows' order: "
        f"{', '.join(cpu)}; the machine has {cpus} cores.\n",
    ]


def _join_table(rounds: list[dict[str, Any]]) -> list[str]:
    parts = [
        "| round, mode | engine up → ready in the gateway (s) | adapters placed | up → placed loaded (s) "
        "| ready → its first adapter token (s) | its share of later requests |",
        "|---|---|---|---|---|---|",
    ]
    for i, round_ in enumerate(rounds, 1):
        for mode, m in round_.items():
            j = m["join"]
            if not j["joined"]:
                parts.append(f"| {i}, {mode} | did not join | | | | |")
                continue
            parts.append(
                f"| {i}, {mode} | {_num(j['up_to_ready_s'])} | {', '.join(j['placed']) or 'none'} | "
                f"{_num(j['up_to_placed_loaded_s'])} | {_num(j['ready_to_first_adapter_token_s'])} | "
                f"{j['share_of_later_requests']:.0%} |"
            )
    return parts


def _targets(result: dict[str, Any]) -> list[str]:
    if "targets" not in result:
        return []
    lines = [
        f"- {'met' if t['met'] else 'MISSED'}: {name}: picker {_num(t['picker'])}, round robin {_num(t['round_robin'])}"
        for name, t in result["targets"].items()
    ]
    return ["\nIssue 17's targets (for the picker; medians):\n", *lines, ""]


def _num(value: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
