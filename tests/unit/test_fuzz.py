"""Schemathesis against the gateway's own OpenAPI schema: every operation (public,
tenant and admin), valid and invalid examples, each sent with the right key and with
none. The contract: never a 5xx, and every error in the OpenAI shape.

`make test` runs a bounded, derandomized pass (ADAPTSERVE_FUZZ_EXAMPLES per operation
and mode, 20 by default); `make fuzz` a long random one, with a JSON report
(ADAPTSERVE_FUZZ_REPORT)."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from adaptserve.bench.fake_engine import BASE, FakeState, create_fake_vllm
from adaptserve.config import Settings
from adaptserve.server import listen
from adaptserve.server.app import create_app
from tests.helpers import ADMIN_KEY, API_KEY, ServerThread, free_port, make_adapter

EXAMPLES = int(os.environ.get("ADAPTSERVE_FUZZ_EXAMPLES", "20"))
RANDOM = bool(os.environ.get("ADAPTSERVE_FUZZ_RANDOM"))
REPORT = os.environ.get("ADAPTSERVE_FUZZ_REPORT")
TEMPLATES = Path(__file__).parents[2] / "templates"


@pytest.fixture(scope="module")
def target(
    module_database_url: str | None, base_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A gateway (on each database: PostgreSQL's text and integer columns refuse what
    SQLite stores; the bundled templates, two adapters) before a fake vLLM; the
    default tenant's PII policy is `mask`, so every fuzzed body (every string and key,
    known field or not) goes through the screening walk and the placeholders."""
    tmp = tmp_path_factory.mktemp("fuzz")
    fake = ServerThread(create_fake_vllm(FakeState(served=[BASE, "minilm"]))).start()  # an encoder too
    settings = Settings(
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        data_dir=tmp / "data",
        database_url=module_database_url,
        model=str(base_model),
        upstreams=[fake.url],
        adapters={"alpha": make_adapter(tmp / "alpha", seed=1), "beta": make_adapter(tmp / "beta", seed=2)},
        templates_dir=TEMPLATES,
        models=[{"name": "minilm", "role": "embed", "upstreams": [fake.url]}],  # /v1/embeddings' example model
        port=free_port(),
        log_level="warning",
        auth_failures_per_minute=1_000_000,  # the keyless half must not lock out the keyed half
    )
    (config,) = listen.configs(create_app(settings), settings)
    gateway = ServerThread(None, config=config).start(ready_path="/ready")
    masked = httpx.put(
        gateway.url + "/admin/tenants/default/pii",
        json={"mode": "mask"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert masked.status_code == 200, masked.text
    yield gateway.url
    gateway.stop()
    fake.stop()


def contract_problem(response: Any) -> str | None:
    """Why a response breaks the contract, or None."""
    if response.status_code >= 500:
        return f"{response.status_code} server error: {response.text[:300]}"
    if response.status_code < 400:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} without an OpenAI error body: {response.text[:300]}"
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"{response.status_code} error body has fields {sorted(error) if isinstance(error, dict) else error}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return f"{response.status_code} error without a message or type: {error}"
    return None


def _key_for(path: str) -> str:
    return ADMIN_KEY if path.startswith(("/admin", "/metrics")) else API_KEY


def _fuzz_operation(url: str, operation: Any, mode: GenerationMode, statuses: collections.Counter) -> None:
    headers = [{"Authorization": f"Bearer {_key_for(operation.path)}"}, {}]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        verbosity=Verbosity.quiet,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        for auth in headers:
            response = case.call(base_url=url, headers=auth, timeout=30)
            statuses[response.status_code] += 1
            problem = contract_problem(response)
            assert problem is None, f"{case.method} {case.formatted_path} ({'keyed' if auth else 'no key'}): {problem}"

    run()


def test_every_operation_keeps_the_contract(target: str) -> None:
    schema = schemathesis.openapi.from_url(target + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25  # every route is in the schema
    statuses: collections.Counter = collections.Counter()
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(target, operation, mode, statuses)
            except AssertionError as exc:  # hypothesis re-raises the shrunk example
                failures.append(f"{operation.label} [{mode.value}]: {str(exc).splitlines()[0]}")
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
    summary = {
        "operations": len(operations),
        "examples_per_operation_and_mode": EXAMPLES,
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "failures": failures,
    }
    print(json.dumps(summary))
    if REPORT:
        Path(REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    assert not failures, "\n".join(failures)
    assert statuses[200] + statuses[201] + statuses[204] > 0  # some examples got through, not only errors
