"""The routing scenario's per-request split (`bench/routing.py`): for the slowest 1% of
a mode's requests by TTFT, where each one waited (in the gateway, loads included; in
the engine's queue, and how many steps it was passed over for want of an adapter
slot) and what the engine's batch ran when it arrived; and where the measured adapter
loads went (by adapter, with its popularity rank in the run, and by engine)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from adaptserve.bench.sim_engine import LoadEvent, Sequence


def tail_split(
    ttfts: dict[str, float],
    starts: dict[str, float],
    seqs: dict[str, tuple[int, Sequence]],
    finished: list[list[Sequence]],
) -> list[dict[str, Any]]:
    """`ttfts` and `starts` (perf_counter) by request tag; `seqs`: each tag's engine and
    sequence; `finished`: every sequence each engine finished (to find its batch)."""
    ranks = _ranks(seq.model for _, seq in seqs.values())
    slowest = sorted(ttfts, key=ttfts.__getitem__)[int(0.99 * len(ttfts)) :]
    rows = []
    for tag in slowest:
        engine, seq = seqs[tag]
        assert seq.admitted is not None
        batch = {
            other.model
            for other in finished[engine]
            if other.admitted is not None and other.admitted <= seq.arrived < (other.finished or float("inf"))
        }
        rows.append(
            {
                "adapter": _alias(seq.model),
                "popularity_rank": ranks[seq.model],
                "engine": engine,
                "ttft_ms": round(1000 * ttfts[tag], 1),
                "gateway_ms": round(1000 * (seq.arrived - starts[tag]), 1),
                "engine_queue_ms": round(1000 * (seq.admitted - seq.arrived), 1),
                "steps_passed_over_for_a_slot": seq.slot_waits,
                "batch_at_arrival": sorted(_alias(m) for m in batch),
            }
        )
    return rows


def load_split(loads: list[list[LoadEvent]], seqs: dict[str, tuple[int, Sequence]]) -> dict[str, Any]:
    """The measured loads by adapter (most popular first, with its rank and share of
    the requests) and by engine."""
    requests = Counter(seq.model for _, seq in seqs.values())
    by_adapter = Counter(ev.name for here in loads for ev in here)
    total = max(sum(requests.values()), 1)
    return {
        "by_adapter": [
            {
                "adapter": _alias(name),
                "popularity_rank": rank,
                "requests_pct": round(100 * requests[name] / total, 1),
                "loads": by_adapter[name],
            }
            for name, rank in sorted(_ranks(requests.elements()).items(), key=lambda kv: kv[1])
        ],
        "by_engine": [len(here) for here in loads],
    }


def _ranks(models: Any) -> dict[str, int]:
    return {name: rank for rank, (name, _) in enumerate(Counter(models).most_common())}


def _alias(internal: str) -> str:
    return internal.split("--", 1)[0].removeprefix("bench-")
