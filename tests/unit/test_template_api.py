"""Template endpoints through the real gateway in front of the fake vLLM: the admin
API (versions, activation, ownership), classify (scores, calibration, batches, both
scoring paths), generate (schema, stream), errors and usage per template."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from adaptserve.bench.fake_engine import FakeState
from adaptserve.db import Database, TemplateCalibrationRow
from tests.helpers import ADMIN_KEY, CONTACT, SENTIMENT, RunningGateway


def put(gateway: RunningGateway, doc: dict, *, tenant: str | None = None, yaml_body: bool = False) -> httpx.Response:
    doc = doc | ({"tenant": tenant} if tenant else {})
    content = yaml.safe_dump(doc) if yaml_body else json.dumps(doc)
    return gateway.admin("PUT", f"/templates/{doc['name']}", content=content)


def run(gateway: RunningGateway, name: str, body: dict, key: str | None = None) -> httpx.Response:
    return gateway.post(f"/v1/templates/{name}", body, **({"key": key} if key else {}))


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway()


def test_put_makes_immutable_versions_and_activate_switches(gateway: RunningGateway) -> None:
    first = put(gateway, SENTIMENT, yaml_body=True)
    assert first.status_code == 201 and first.json()["version"] == 1
    assert put(gateway, SENTIMENT).status_code == 200  # identical: the same version
    changed = SENTIMENT | {"instruction": "Positive or negative?"}
    second = put(gateway, changed)
    assert second.status_code == 201 and second.json()["version"] == 2 and second.json()["active"]
    versions = gateway.admin("GET", "/templates/sent").json()
    assert [v["version"] for v in versions["versions"]] == [1, 2] and versions["active_version"] == 2
    assert versions["versions"][0]["document"]["instruction"] == SENTIMENT["instruction"]
    assert gateway.admin("POST", "/templates/sent/activate", json={"version": 1}).json()["active"]
    described = httpx.get(gateway.url + "/v1/templates/sent", headers={"Authorization": "Bearer sk-test-key"}).json()
    assert described["version"] == 1
    assert described["inputs"]["properties"]["text"] == {"type": "string", "maxLength": 200}
    assert [label["name"] for label in described["labels"]] == ["negative", "positive"]
    pinned = run(gateway, "sent", {"inputs": {"text": "good"}, "version": 2}).json()
    assert pinned["version"] == 2
    assert run(gateway, "sent", {"inputs": {"text": "good"}, "version": 9}).json()["error"]["code"] == (
        "template_not_found"
    )
    staged = put(gateway, SENTIMENT | {"description": "staged"}).json()
    assert staged["version"] == 3
    not_active = gateway.admin("PUT", "/templates/sent?activate=false", content=json.dumps(SENTIMENT | {"x": 1}))
    assert not_active.status_code == 400 and not_active.json()["error"]["param"] == "x"


def test_bad_documents_get_400_naming_the_field(gateway: RunningGateway) -> None:
    response = gateway.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT | {"labels": [{"name": "a"}]}))
    assert response.status_code == 400 and "two labels" in response.json()["error"]["message"]
    response = gateway.admin("PUT", "/templates/other", content=json.dumps(SENTIMENT))
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    response = gateway.admin("PUT", "/templates/sent", content=b"{not: [yaml")
    assert response.status_code == 400
    assert gateway.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT), key="sk-test-key").status_code == 401


def test_tenants_see_their_own_and_global_templates_only(gateway: RunningGateway) -> None:
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    gateway.admin("PUT", "/tenants/acme/models/default", json={"base": True})
    acme_key = gateway.admin("POST", "/tenants/acme/keys").json()["key"]
    assert put(gateway, SENTIMENT).status_code == 201
    assert put(gateway, SENTIMENT | {"name": "secret"}, tenant="acme").status_code == 201
    shadow = SENTIMENT | {"description": "acme's own"}
    assert put(gateway, shadow, tenant="acme").status_code == 201

    def names(key: str) -> dict[str, str]:
        listing = httpx.get(gateway.url + "/v1/templates", headers={"Authorization": f"Bearer {key}"}).json()
        return {t["name"]: t["description"] for t in listing["data"]}

    assert names(acme_key) == {"secret": "", "sent": "acme's own"}
    assert names("sk-test-key") == {"sent": ""}
    hidden = run(gateway, "secret", {"inputs": {"text": "x"}})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "template_not_found"
    assert run(gateway, "secret", {"inputs": {"text": "x"}}, key=acme_key).status_code == 200
    assert put(gateway, SENTIMENT, tenant="nobody").status_code == 400
    assert gateway.admin("DELETE", "/templates/sent?tenant=acme").status_code == 204
    assert names(acme_key)["sent"] == ""  # the global one shows again
    gateway.admin("DELETE", "/tenants/acme")
    assert gateway.admin("GET", "/templates/secret?tenant=acme").status_code == 404


def test_classify_scores_every_label_in_one_upstream_call(gateway: RunningGateway, fake: FakeState) -> None:
    put(gateway, SENTIMENT)
    fake.requests.clear()
    answer = run(gateway, "sent", {"inputs": {"text": "positive positive stuff"}, "explain": True}).json()
    assert answer["label"] == "positive" and answer["calibrated"] is False and answer["version"] == 1
    assert sum(answer["scores"].values()) == pytest.approx(1.0)
    assert answer["explain"]["scoring"] == "first_token"
    # The fake's log-probability is -3 + occurrences in the prompt: "positive" is once in
    # the question, once in the answer list and twice in the input; "negative" (the
    # question has "negative?") only in the list.
    assert answer["explain"]["logprobs"] == {"negative": -2.0, "positive": 1.0}
    scoring = [r for r in fake.requests if "logprob_token_ids" in r]
    assert len(scoring) == 1 and len(scoring[0]["prompt"]) == 1
    assert "prompt_logprobs" not in scoring[0] and not scoring[0].get("echo")
    assert answer["explain"]["prompt_tokens"] == len(scoring[0]["prompt"][0])


def test_batches_keep_their_order_in_one_call(gateway: RunningGateway, fake: FakeState) -> None:
    put(gateway, SENTIMENT)
    texts = ["negative", "positive positive", "negative negative negative", "positive"]
    fake.requests.clear()
    answer = run(gateway, "sent", {"inputs": [{"text": t} for t in texts]}).json()
    assert [r["label"] for r in answer["results"]] == ["negative", "positive", "negative", "positive"]
    assert len([r for r in fake.requests if "logprob_token_ids" in r]) == 1
    assert answer["usage"]["completion_tokens"] == 4
    too_many = run(gateway, "sent", {"inputs": [{"text": "x"}] * 65})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "inputs"
    bad_item = run(gateway, "sent", {"inputs": [{"text": "x"}, {"text": 3}]})
    assert bad_item.json()["error"]["param"] == "inputs[1].text"


def test_shared_first_tokens_score_whole_answers(gateway: RunningGateway, fake: FakeState) -> None:
    doc = SENTIMENT | {
        "labels": [{"name": "good", "verbalizer": "very good"}, {"name": "bad", "verbalizer": "very bad"}]
    }
    put(gateway, doc)
    fake.requests.clear()
    answer = run(gateway, "sent", {"inputs": [{"text": "bad bad"}, {"text": "good"}], "explain": True}).json()
    first, second = answer["results"]
    assert first["explain"]["scoring"] == "continuation"
    assert (first["label"], second["label"]) == ("bad", "good")
    scoring = [r for r in fake.requests if "logprob_token_ids" in r]
    assert len(scoring) == 1 and len(scoring[0]["prompt"]) == 4  # 2 inputs x ("", "very")
    very = fake.vocab["very"]
    assert [p[-1] == very for p in scoring[0]["prompt"]] == [False, True, False, True]


def test_labels_are_scored_after_the_answer_prefix(gateway: RunningGateway, fake: FakeState) -> None:
    put(gateway, SENTIMENT | {"answer_prefix": "It is"})
    fake.requests.clear()
    assert run(gateway, "sent", {"inputs": {"text": "positive"}}).json()["label"] == "positive"
    prompt = next(r for r in fake.requests if "logprob_token_ids" in r)["prompt"][0]
    # The prompt ends inside the open assistant turn: <s> assistant It is (no </s>).
    assert prompt[-4:] == [1, fake.vocab["assistant"], fake.vocab["It"], fake.vocab["is"]]


def test_calibration_is_computed_once_stored_and_changes_the_answer(
    gateway: RunningGateway, fake: FakeState, database_url: str | None, tmp_path: Path
) -> None:
    fake.label_bias["negative"] = 2.5  # this "model" leans negative whatever it reads
    put(gateway, SENTIMENT)
    put(gateway, SENTIMENT | {"name": "sent-cal", "calibration": True})
    body = {"inputs": {"text": "positive"}, "explain": True}
    plain = run(gateway, "sent", body).json()
    assert plain["label"] == "negative" and not plain["calibrated"]
    fake.requests.clear()
    calibrated = run(gateway, "sent-cal", body).json()
    assert calibrated["calibrated"] and calibrated["label"] == "positive"
    assert calibrated["explain"]["logprobs"] == plain["explain"]["logprobs"]  # before calibration: the same
    assert sum(calibrated["scores"].values()) == pytest.approx(1.0)
    content_free = [r for r in fake.requests if len(r.get("prompt") or []) == 3]
    assert len(content_free) == 1  # "N/A", "" and "[MASK]" in one call
    fake.requests.clear()
    assert run(gateway, "sent-cal", body).json()["scores"] == calibrated["scores"]
    assert len([r for r in fake.requests if "logprob_token_ids" in r]) == 1  # no second calibration
    db = Database.for_data_dir(database_url, tmp_path / "data")
    with db.session() as s:
        rows = s.query(TemplateCalibrationRow).all()
        assert len(rows) == 1 and rows[0].probs[0] > rows[0].probs[1]  # the stored bias leans negative
    db.dispose()


def test_generate_with_a_schema_returns_a_validated_object(gateway: RunningGateway, fake: FakeState) -> None:
    put(gateway, CONTACT)
    fake.json_reply = {"email": "kim@example.com"}
    answer = run(gateway, "contact", {"inputs": {"message": "Kim, kim@example.com"}}).json()
    assert answer["output"] == {"email": "kim@example.com"} and answer["version"] == 1
    sent = fake.requests[-1]
    assert sent["structured_outputs"] == {"json": CONTACT["schema"]}
    assert "guided_json" not in sent and sent["temperature"] == 0.0
    fake.json_reply = {"phone": "123"}
    broken = run(gateway, "contact", {"inputs": {"message": "x"}})
    assert broken.status_code == 502 and broken.json()["error"]["code"] == "invalid_output"
    batch = run(gateway, "contact", {"inputs": [{"message": "a"}, {"message": "b"}]}).json()
    assert all(r["error"]["code"] == "invalid_output" for r in batch["results"])


def test_generate_streams_deltas_then_the_result(gateway: RunningGateway, fake: FakeState) -> None:
    put(gateway, CONTACT | {"name": "echo", "schema": None})
    with httpx.stream(
        "POST",
        gateway.url + "/v1/templates/echo",
        json={"inputs": {"message": "hello there"}, "stream": True},
        headers={"Authorization": "Bearer sk-test-key"},
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    deltas = "".join(e["delta"] for e in events if "delta" in e)
    final = events[-1]
    assert final["text"] == deltas and "hello there" in deltas
    assert final["usage"]["completion_tokens"] > 0 and final["version"] == 1
    refused = run(gateway, "echo", {"inputs": [{"message": "a"}], "stream": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream"


def test_usage_is_metered_per_template(gateway: RunningGateway) -> None:
    put(gateway, SENTIMENT)
    run(gateway, "sent", {"inputs": [{"text": "a"}, {"text": "b"}]})
    gateway.client().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    rows = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": "Bearer sk-test-key"}).json()["data"]
    by_template = {r["template"]: r for r in rows}
    assert set(by_template) == {"sent", None}
    assert by_template["sent"]["requests"] == 1 and by_template["sent"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "inputs"),
        ({"inputs": {"text": "x"}, "surprise": 1}, "surprise"),
        ({"inputs": {"text": "x" * 201}}, "inputs.text"),
        ({"inputs": {"text": None}}, "inputs.text"),
        ({"inputs": {"text": "x"}, "version": 0}, "version"),
        ({"inputs": {"text": "x"}, "stream": True}, "stream"),
    ],
)
def test_bad_calls_get_400_with_param(gateway: RunningGateway, body: dict, param: str) -> None:
    put(gateway, SENTIMENT)
    response = run(gateway, "sent", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_templates_folder_is_applied_at_start(start_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "sent.yaml").write_text(yaml.safe_dump(SENTIMENT))
    gateway = start_gateway(templates_dir=folder)
    assert run(gateway, "sent", {"inputs": {"text": "positive"}}).json()["label"] == "positive"
    listing = gateway.admin("GET", "/templates", key=ADMIN_KEY).json()["data"]
    assert listing == [{"name": "sent", "owner": None, "active_version": 1}]


def test_per_template_caches_are_bounded(start_gateway: Callable[..., RunningGateway]) -> None:
    """Parsed specs, scoring plans and calibration locks are kept for the most recently
    used `template_cache_size` templates only, however many a tenant makes."""
    gateway = start_gateway(template_cache_size=2)
    for i in range(5):
        doc = SENTIMENT | {"name": f"sent{i}", "calibration": True}
        assert put(gateway, doc).status_code == 201
        assert run(gateway, f"sent{i}", {"inputs": {"text": "good"}}).status_code == 200
    served = gateway.server.server.config.app.state.gateway  # type: ignore[union-attr]
    caches = served.template_service.cache_sizes()
    assert caches and all(0 < size <= 2 for size in caches.values()), caches
    assert run(gateway, "sent0", {"inputs": {"text": "good"}}).status_code == 200  # evicted: built again
