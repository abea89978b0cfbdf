"""Usage metering (streamed and not), quotas with 429 + Retry-After, fairness
between tenants, and Prometheus metrics."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from sqlalchemy import text

from tests.helpers import ADMIN_KEY, API_KEY, SENTIMENT, assert_openai_error, gateway_metric, run_template, wait_for

Q = [{"role": "user", "content": "one two three"}]  # the fake counts 3 prompt tokens
METRICS_KEY = "sk-test-metrics"


def tenant(gw, name: str, **quotas) -> openai.OpenAI:
    gw.admin("POST", "/tenants", json={"name": name})
    gw.admin("PUT", f"/tenants/{name}/models/chat", json={"base": True})
    if quotas:
        assert gw.admin("PUT", f"/tenants/{name}/quotas", json=quotas).status_code == 200
    return gw.client(api_key=gw.admin("POST", f"/tenants/{name}/keys").json()["key"])


def test_usage_is_metered_for_streamed_and_plain_calls(gateway):
    client = tenant(gateway, "meter")
    client.chat.completions.create(model="chat", messages=Q, max_tokens=4)  # 4 completion tokens
    plain = list(client.chat.completions.create(model="chat", messages=Q, max_tokens=5, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)  # not asked, not sent
    asked = list(
        client.chat.completions.create(
            model="chat", messages=Q, max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].usage.completion_tokens == 2
    rows = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {client.api_key}"}).json()["data"]
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("chat", 3, 9, 11)
    ]
    everyone = gateway.admin("GET", "/usage").json()["data"]
    assert {r["tenant"] for r in everyone} == {"meter"}
    assert gateway.admin("GET", "/usage", params={"tenant": "nobody"}).json()["data"] == []


def test_usage_survives_a_restart(start_gateway):
    gw = start_gateway()
    tenant(gw, "durable").chat.completions.create(model="chat", messages=Q)
    gw.server.stop()  # shutdown flushes what is still in memory
    again = start_gateway()
    assert [r["requests"] for r in again.admin("GET", "/usage", params={"tenant": "durable"}).json()["data"]] == [1]


def test_requests_per_minute_quota(gateway):
    client = tenant(gateway, "limited", requests_per_minute=2)
    for _ in range(2):
        client.chat.completions.create(model="chat", messages=Q)
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "chat", "messages": Q},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 0 < int(response.headers["Retry-After"]) <= 60
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=Q)


def test_tokens_per_minute_quota(gateway):
    reserve = len(json.dumps({"messages": Q}).encode()) + 5  # the prompt's bytes bound its tokens
    client = tenant(gateway, "tokens", tokens_per_minute=reserve + 7)
    client.chat.completions.create(model="chat", messages=Q, max_tokens=5)  # 3 prompt + 5 completion tokens
    with pytest.raises(openai.RateLimitError):  # 8 used + this one's worst case is over the limit
        client.chat.completions.create(model="chat", messages=Q, max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="lower max_tokens"):  # could never fit: not a 429
        client.chat.completions.create(model="chat", messages=Q)


def test_a_tenant_reads_its_own_quota_headroom(gateway):
    client = tenant(gateway, "roomy", requests_per_minute=5, tokens_per_minute=10_000)
    headers = {"Authorization": f"Bearer {client.api_key}"}
    before = httpx.get(gateway.url + "/v1/quota", headers=headers).json()
    assert before == {
        "window_s": 60.0,
        "limits": {
            "requests_per_minute": {"limit": 5, "used": 0, "left": 5},
            "tokens_per_minute": {"limit": 10_000, "used": 0, "left": 10_000},
            "max_concurrent": {"limit": None, "used": 0, "left": None},
        },
    }
    for _ in range(2):
        client.chat.completions.create(model="chat", messages=Q, max_tokens=5)  # 3 + 5 tokens each
    after = httpx.get(gateway.url + "/v1/quota", headers=headers).json()["limits"]
    assert after["requests_per_minute"] == {"limit": 5, "used": 2, "left": 3}
    assert after["tokens_per_minute"] == {"limit": 10_000, "used": 16, "left": 10_000 - 16}
    assert after["max_concurrent"]["used"] == 0
    other = tenant(gateway, "other")  # another tenant's counts are its own; no limits: nothing left to say
    mine = httpx.get(gateway.url + "/v1/quota", headers={"Authorization": f"Bearer {other.api_key}"}).json()
    assert all(v == {"limit": None, "used": 0, "left": None} for v in mine["limits"].values())
    assert httpx.get(gateway.url + "/v1/quota").status_code == 401


def test_a_flooding_tenant_does_not_starve_another(gateway, fake):
    fake.token_delay_s = 0.5  # the two admitted streams stay open (20 s) until the other ten are refused
    flood, calm = tenant(gateway, "flood", max_concurrent=2), tenant(gateway, "calm")
    statuses: list[int] = []
    served_until: list[float] = []  # when each admitted flood stream ended

    def flood_one() -> None:
        long = [{"role": "user", "content": "word " * 40}]  # the fake echoes it: 40 tokens, about 2 s
        body = {"model": "chat", "messages": long, "max_tokens": 40, "stream": True}
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {flood.api_key}"},
        )
        statuses.append(r.status_code)
        if r.status_code == 200:
            served_until.append(time.perf_counter())

    threads = [threading.Thread(target=flood_one) for _ in range(12)]
    for t in threads:
        t.start()
    # Waited for, not slept: on a loaded machine the flood's requests may take a while to arrive.
    wait_for(lambda: len(statuses) == 10 and fake.streams_open == 2, 30, "the flood was not admitted 2, refused 10")
    # From their next token on, the flood's streams end in about 2 s.
    fake.token_delay_s = 0.05
    calm.chat.completions.create(model="chat", messages=Q, max_tokens=5)
    calm_done = time.perf_counter()
    for t in threads:
        t.join()
    assert statuses.count(200) == 2 and statuses.count(429) == 10
    # 5 tokens against the flood's 40: served alongside the flood, not queued behind it.
    # Compared with the flood's own end, not a wall-clock bound, so a loaded machine
    # slows both sides alike.
    assert calm_done < min(served_until)


def test_metrics_by_tenant_and_model_need_the_admin_key(gateway):
    tenant(gateway, "observed").chat.completions.create(model="chat", messages=Q, max_tokens=4)
    assert httpx.get(gateway.url + "/metrics").status_code == 401
    text = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'adaptserve_requests_total{endpoint="chat",model="chat",status="200",tenant="observed"} 1.0' in text
    assert 'adaptserve_tokens_total{kind="completion",model="chat",tenant="observed"} 4.0' in text
    assert 'adaptserve_adapter_loads_total{result="ok"}' in text


def test_prefix_cache_hits_are_counted_per_tenant_and_model(gateway, fake):
    """vLLM's usage.prompt_tokens_details.cached_tokens, summed as adaptserve_tokens
    {kind="cached"}: a plain answer's, a stream's (its final usage), and each of a
    template call's scoring requests."""
    client = tenant(gateway, "cached")
    client.chat.completions.create(model="chat", messages=Q, max_tokens=4)
    assert gateway_metric(gateway, "adaptserve_tokens_total", tenant="cached", kind="cached") == 0
    fake.cached_tokens = 2
    client.chat.completions.create(model="chat", messages=Q, max_tokens=4)
    for _ in client.chat.completions.create(model="chat", messages=Q, max_tokens=4, stream=True):
        pass
    assert gateway_metric(gateway, "adaptserve_tokens_total", tenant="cached", model="chat", kind="cached") == 4
    assert gateway.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT)).status_code == 201
    run_template(gateway, "sent", {"inputs": [{"text": "good"}, {"text": "bad"}]})
    scoring = [r for r in fake.requests if r.get("logprob_token_ids")][-1]
    hits = min(2, sum(map(len, scoring["prompt"])))  # the fake reports 2 per engine request
    assert gateway_metric(gateway, "adaptserve_tokens_total", tenant="default", kind="cached") == hits


def test_the_metrics_key_reads_metrics_and_nothing_else(start_gateway):
    gw = start_gateway(metrics_key=METRICS_KEY)
    as_metrics = {"Authorization": f"Bearer {METRICS_KEY}"}
    scraped = httpx.get(gw.url + "/metrics", headers=as_metrics)
    assert scraped.status_code == 200 and "adaptserve_requests_total" in scraped.text
    admin_scrape = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin_scrape.status_code == 200  # the operator still reads it
    assert_openai_error(
        httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key"
    )
    assert_openai_error(httpx.get(gw.url + "/metrics"), 401, "invalid_api_key")
    assert_openai_error(
        httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}), 401, "invalid_api_key"
    )
    for method, path, body in [
        ("GET", "/admin/tenants", None),
        ("POST", "/admin/tenants", {"name": "by-metrics"}),
        ("GET", "/admin/audit", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "default", "messages": Q}),
    ]:
        response = httpx.request(method, gw.url + path, headers=as_metrics, json=body)
        assert response.status_code in (401, 403), (path, response.text)
    assert "by-metrics" not in gw.admin("GET", "/tenants").text


def test_without_a_metrics_key_metrics_take_the_admin_key_only(gateway):
    assert httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    refused = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert_openai_error(refused, 401, "invalid_api_key")


def test_wrong_metrics_keys_count_toward_the_failed_key_throttle(start_gateway):
    gw = start_gateway(metrics_key=METRICS_KEY, auth_failures_per_minute=3)
    for _ in range(3):
        assert httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer guess"}).status_code == 401
    throttled = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert_openai_error(throttled, 429, "rate_limit_exceeded")


def test_a_stream_the_client_abandons_gives_its_slot_back(gateway, fake):
    client = tenant(gateway, "leaver", max_concurrent=1)
    fake.token_delay_s = 0.5  # each stream would run 20 s: a slot held until its end is told from one given back
    body = {"model": "chat", "messages": [{"role": "user", "content": "w " * 40}], "max_tokens": 40, "stream": True}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    for _ in range(3):
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            next(response.iter_lines())
        # The slot comes back shortly after the client leaves (at the next token, 0.5 s); a
        # leaked one never does, one held until the engine's stream ends takes 20 s. The
        # 10 s allowed leaves a loaded machine room, and still tells those apart.
        deadline = time.monotonic() + 10
        status = 429
        while status == 429 and time.monotonic() < deadline:
            status = httpx.post(
                gateway.url + "/v1/chat/completions", headers=headers, json={"model": "chat", "messages": Q}
            ).status_code
            time.sleep(0.05)
        assert status == 200


def test_upgrading_the_schema_keeps_recorded_usage(database_url, tmp_path):
    """Revision 0002 rebuilds the usage table under a new key: existing rows survive."""
    from adaptserve.db import Database

    db = Database.for_data_dir(database_url, tmp_path)
    db.migrate("0001")
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO usage (tenant, alias, hour, requests, prompt_tokens, completion_tokens)"
                " VALUES ('acme', 'support', '2026-01-01 10:00:00', 7, 70, 700)"
            )
        )
    db.migrate()
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT tenant, alias, template, requests, completion_tokens FROM usage"))
        assert [tuple(r) for r in rows] == [("acme", "support", "", 7, 700)]
    db.dispose()
