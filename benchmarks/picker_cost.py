"""What one routing decision costs in the gateway: `Picker.pick` (rendezvous ranking,
residency lookups, home-set bookkeeping) timed over many calls, for fleets of several
sizes, with adapters resident on some replicas and uneven load. No server, no engine:
the picker runs on the event loop of every request, so this is its whole cost.

    python benchmarks/picker_cost.py --calls 20000 --out benchmarks/results/picker_cost.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from adaptserve.adapters.residency import AdapterVersion, Residency
from adaptserve.metrics import Metrics
from adaptserve.serving.picker import Picker
from adaptserve.upstream.client import State, Upstream


def fleet(replicas: int, adapters: int, rng: random.Random) -> tuple[list[Upstream], list[AdapterVersion], Picker]:
    upstreams = [Upstream(f"http://10.0.0.{i}:8000", 5.0) for i in range(replicas)]
    residency = Residency(8, Metrics())
    versions = [AdapterVersion(f"ad{i}", "v1", Path("/adapters") / f"ad{i}", 8) for i in range(adapters)]
    for upstream in upstreams:
        upstream.state, upstream.generation = State.READY, 1
        upstream.inflight = rng.randrange(0, 12)
        for version in rng.sample(versions, min(4, adapters)):  # what a replica holds
            residency._resident.setdefault(upstream.url, {})[version.internal_name] = 1
    return upstreams, versions, Picker(residency)


def measure(replicas: int, adapters: int, calls: int) -> dict[str, float]:
    rng = random.Random(0)
    upstreams, versions, picker = fleet(replicas, adapters, rng)
    weights = [1 / (i + 1) ** 1.1 for i in range(adapters)]  # Zipf popularity
    chosen = rng.choices([*versions, None], weights=[*weights, 0.3 * sum(weights)], k=calls)
    times = []
    for adapter in chosen:
        started = time.perf_counter_ns()
        picker.pick(upstreams, adapter)
        times.append((time.perf_counter_ns() - started) / 1000)
    times.sort()
    return {
        "replicas": replicas,
        "adapters": adapters,
        "calls": calls,
        "p50_us": round(statistics.median(times), 1),
        "p99_us": round(times[int(0.99 * len(times))], 1),
        "max_us": round(times[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [measure(r, a, args.calls) for r, a in ((2, 16), (3, 16), (8, 100), (32, 1000))]
    result = {"command": "python " + " ".join(sys.argv), "python": sys.version.split()[0], "results": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
