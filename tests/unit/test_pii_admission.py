"""Personal-data detection is paid last and bounded: a request is authenticated,
resolved, bounded and admitted under its tenant's quotas before any detection runs;
detection reads at most `pii_max_bytes_per_request` of one request; and one tenant's
detection runs at most `pii_concurrency_per_tenant` at a time, on the detection
workers only, so it never holds up another tenant's requests. The detector is replaced
by a counting (or blocking) one: nothing here depends on timing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.pii.detector import Detector, Finding
from adaptserve.pii.policy import PiiPolicy
from tests.helpers import CONTACT, RunningGateway, run_template, wait_for

EMAIL = "kim.lee@example.com"


class FakeDetector:
    """Counts its calls; a text holding SLOW waits until `release` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.slow_inside = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def find(self, text: str, policy: PiiPolicy) -> list[Finding]:
        with self._lock:
            self.calls += 1
            self.slow_inside += "SLOW" in text
        if "SLOW" in text:
            assert self.release.wait(60), "the test never released the detector"
        at = text.find(EMAIL)
        return [Finding("EMAIL_ADDRESS", at, at + len(EMAIL), 1.0)] if at >= 0 else []


@pytest.fixture
def detector(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDetector]:
    fake_detector = FakeDetector()
    monkeypatch.setattr(Detector, "find", lambda self, text, policy: fake_detector.find(text, policy))
    yield fake_detector
    fake_detector.release.set()


def tenant(gw: RunningGateway, name: str, mode: str = "mask", **quotas: int) -> str:
    assert gw.admin("POST", "/tenants", json={"name": name}).status_code == 201
    assert gw.admin("PUT", f"/tenants/{name}/models/default", json={"base": True}).status_code == 200
    assert gw.admin("PUT", f"/tenants/{name}/pii", json={"mode": mode}).status_code == 200
    if quotas:
        assert gw.admin("PUT", f"/tenants/{name}/quotas", json=quotas).status_code == 200
    return gw.admin("POST", f"/tenants/{name}/keys").json()["key"]


def chat(gw: RunningGateway, key: str, content: str, timeout: float = 10) -> httpx.Response:
    body = {"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    return httpx.post(
        gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
    )


def test_a_tenant_over_its_rate_gets_its_429_without_any_detection(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, detector: FakeDetector
) -> None:
    gw = start_gateway()
    key = tenant(gw, "busy", requests_per_minute=1)
    assert chat(gw, key, f"mail {EMAIL}").status_code == 200
    assert detector.calls > 0  # the admitted request was screened
    detector.calls = 0
    refused = chat(gw, key, "9" * 65_536)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert detector.calls == 0
    unknown = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": EMAIL}]},
        headers={"Authorization": f"Bearer {tenant(gw, 'other')}"},
    )
    assert unknown.status_code == 404 and detector.calls == 0  # model resolution comes first too
    over = httpx.post(
        gw.url + "/v1/completions",
        json={"model": "default", "prompt": [EMAIL] * 300},
        headers={"Authorization": f"Bearer {tenant(gw, 'third')}"},
    )
    assert over.status_code == 400 and over.json()["error"]["param"] == "prompt" and detector.calls == 0  # bounds


def test_a_template_call_over_the_rate_is_refused_before_its_inputs_are_screened(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, detector: FakeDetector
) -> None:
    gw = start_gateway()
    assert gw.admin("PUT", "/templates/contact", content=json.dumps(CONTACT)).status_code == 201
    key = tenant(gw, "busy", requests_per_minute=1)
    fake.json_reply = {"email": "x"}
    assert run_template(gw, "contact", {"inputs": {"message": EMAIL}}, key=key).status_code == 200
    detector.calls = 0
    refused = run_template(gw, "contact", {"inputs": {"message": "9" * 4000}}, key=key)
    assert refused.status_code == 429 and detector.calls == 0, refused.text


def test_detection_reads_a_bounded_number_of_bytes_per_request(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, detector: FakeDetector
) -> None:
    gw = start_gateway(pii_max_bytes_per_request=4096)
    key = tenant(gw, "acme", mode="block")
    before = len(fake.requests)
    refused = chat(gw, key, "x" * 5000)
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "messages", refused.text
    assert detector.calls == 0 and len(fake.requests) == before  # refused before any detection or engine work
    assert chat(gw, key, "x" * 3000).status_code == 200
    log_key = tenant(gw, "relaxed", mode="log")  # a tenant whose requests are not screened is not bounded here
    assert chat(gw, log_key, "x" * 5000).status_code == 200


def test_one_tenants_detection_does_not_hold_up_another_tenants_requests(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, detector: FakeDetector
) -> None:
    gw = start_gateway()
    hog, other = tenant(gw, "hog"), tenant(gw, "other")
    with ThreadPoolExecutor(40) as pool:  # more than any thread pool the gateway has
        held = [pool.submit(chat, gw, hog, f"SLOW {i}", 60) for i in range(40)]
        wait_for(lambda: detector.slow_inside >= 1, what="the hog's detection never started")
        # Detection too, while the hog's is stuck (held up to 60 s: 30 s still tells them apart).
        answer = chat(gw, other, f"mail {EMAIL}", 30)
        assert answer.status_code == 200 and EMAIL in answer.text
        assert detector.slow_inside <= gw.settings.pii_concurrency_per_tenant  # the hog's share of the workers
        detector.release.set()
        assert all(f.result().status_code == 200 for f in held)
