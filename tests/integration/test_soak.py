"""A short soak (the same code as `adaptserve soak`, bounded to under a minute) against
the session's server: three tenants (base model and adapters), mixed calls from three
users. No call fails, every kind of call ran, and the gateway's memory stays put."""

from __future__ import annotations

import asyncio

from adaptserve.bench.soak import WEIGHTS, SoakPlan, run_soak, setup_tenants
from tests.helpers import ADMIN_KEY

PLAN = SoakPlan(duration_s=45, max_requests=2000, users=3, tenants=3, window_s=15, seed=1)


def test_short_soak_has_no_errors_and_flat_memory(server):
    keys = asyncio.run(setup_tenants(server.url, ADMIN_KEY, PLAN.tenants, ["a1", "a2"]))
    result = asyncio.run(run_soak(server.url, ADMIN_KEY, keys, server.process.pid, PLAN))
    print(result["calls"], result["windows"], result["gateway_rss_mb"])
    assert result["errors"] == 0, (result["error_samples"], server.troubles())
    assert set(result["calls"]) == set(WEIGHTS)
    assert all(w["requests"] > 0 for w in result["windows"])
    rss = result["gateway_rss_mb"]
    assert rss["end"] - rss["start"] < 64, result["gateway_rss_samples"]
