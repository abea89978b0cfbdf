"""Template calls are bounded like any other request: the classifier's scoring plan
(inputs × label-prefix prompts, × attribution variants) is checked against the
per-request bounds before anything reaches the engine, and a template whose plan can
never fit is refused when it is saved."""

from __future__ import annotations

import json

from adaptserve.bench.fake_engine import FakeState
from tests.helpers import RunningGateway, assert_openai_error


def labelled(count: int, calibration: bool = False) -> dict:
    """A classify template whose label answers share their first word: on the fake
    engine's tokenizer (one token per word) each input is scored with 2 + 3 × `count`
    prompts, one per distinct prefix of the answers."""
    labels = [{"name": f"l{i}", "verbalizer": f"x w{i} a b c"} for i in range(count)]
    return {
        "name": "many",
        "kind": "classify",
        "instruction": "Pick one.",
        "inputs": {"text": {"type": "string"}},
        "labels": labels,
        "calibration": calibration,
    }


def put(gw: RunningGateway, doc: dict):
    return gw.admin("PUT", f"/templates/{doc['name']}", content=json.dumps(doc))


def test_a_classify_call_over_the_sequence_bound_is_refused_before_the_engine(
    gateway: RunningGateway, fake: FakeState
) -> None:
    assert put(gateway, labelled(6)).status_code == 201  # 20 prompts per input: one input fits
    fake.requests.clear()
    inputs = [{"text": f"review {i}"} for i in range(16)]  # 16 × 20 = 320 sequences, over 256
    response = gateway.post("/v1/templates/many", {"inputs": inputs})
    error = assert_openai_error(response, 400, param="inputs")
    assert "320" in error["message"] and "256" in error["message"]
    assert fake.requests == []


def test_attributions_over_the_sequence_bound_are_refused_before_the_engine(
    gateway: RunningGateway, fake: FakeState
) -> None:
    assert put(gateway, labelled(6)).status_code == 201
    fake.requests.clear()
    text = " ".join(f"w{i}" for i in range(15))  # 16 occlusion variants × 20 prompts = 320
    response = gateway.post("/v1/templates/many", {"inputs": {"text": text}, "explain": "attributions"})
    assert_openai_error(response, 400, param="attribution")
    assert fake.requests == []


def test_a_legal_classify_call_still_scores_in_one_request(gateway: RunningGateway, fake: FakeState) -> None:
    assert put(gateway, labelled(6)).status_code == 201
    fake.requests.clear()
    response = gateway.post("/v1/templates/many", {"inputs": [{"text": "good"}, {"text": "bad"}]})
    assert response.status_code == 200, response.text
    assert [r["label"] for r in response.json()["results"]] and len(fake.requests) == 1
    assert len(fake.requests[0]["prompt"]) == 2 * 20


def test_a_template_that_can_never_fit_is_refused_when_saved(gateway: RunningGateway, fake: FakeState) -> None:
    response = put(gateway, labelled(90))  # 272 prompts for a single input
    assert_openai_error(response, 400, param="labels")
    # its calibration (3 content-free inputs × 92 prompts) is a request that can never run either
    assert_openai_error(put(gateway, labelled(30, calibration=True)), 400, param="calibration")
    assert gateway.admin("GET", "/templates").json()["data"] == []
    assert fake.requests == []
    assert put(gateway, labelled(30)).status_code == 201  # 92 prompts: it fits


def test_a_template_saved_before_a_restart_is_bounded_before_scoring(start_gateway, fake: FakeState) -> None:
    """After a restart the plan is not known yet: it is read from the tokenizer inside
    the call's admission and checked before anything is scored."""
    gw = start_gateway()
    assert put(gw, labelled(6)).status_code == 201
    gw.server.stop()
    again = start_gateway()  # the same data folder: the template is there, its plan is not
    fake.requests.clear()
    inputs = [{"text": f"review {i}"} for i in range(16)]
    assert_openai_error(again.post("/v1/templates/many", {"inputs": inputs}), 400, param="inputs")
    assert fake.requests == []
    assert again.post("/v1/templates/many", {"inputs": inputs[:2]}).status_code == 200
