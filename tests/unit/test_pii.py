"""Personal data: what the detector finds and what it must leave (look-alikes),
placeholders and their restoration (streams split anywhere), and each tenant's policy
through the gateway in front of the fake vLLM (which echoes the prompt's words): `mask`
keeps values from the engine and restores them in answers and streams, `block`
refuses naming entity types only, `log` scrubs the engine's error messages, detection
failing refuses the request, and the policy's admin API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.pii.detector import Detector
from adaptserve.pii.masking import Placeholders, StreamRestorer, scrubbed
from adaptserve.pii.policy import DEFAULT_POLICY, PiiPolicy
from adaptserve.serving.screening import leaves, rebuilt
from tests.helpers import API_KEY, CONTACT, SENTIMENT, RunningGateway, call_as, new_tenant, tenant_admin_key

EMAIL, PHONE, CARD = "kim.lee@example.com", "+1 415-555-0132", "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


def found(detector: Detector, text: str, policy: PiiPolicy = DEFAULT_POLICY) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start : f.end]) for f in detector.find(text, policy)]


def test_the_detector_finds_contact_and_payment_data(detector: Detector) -> None:
    text = f"Mail {EMAIL} or call {PHONE}; card {CARD}; IBAN DE89 3704 0044 0532 0130 00; from 192.168.1.20"
    assert found(detector, text) == [
        ("EMAIL_ADDRESS", EMAIL),
        ("PHONE_NUMBER", PHONE),
        ("CREDIT_CARD", CARD),
        ("IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
        ("IP_ADDRESS", "192.168.1.20"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 was declined",  # fails the Luhn check
        "your order #123-456-7890 has shipped",
        "invoice no. 415 555 0132 is due",
        "upgrade to version 10.0.0.1 or v2.4.1.7",
        "the meeting moved to 2024-05-01 at 10:30",
        "IBAN DE89 3704 0044 0532 0130 01",  # a wrong checksum
    ],
)
def test_look_alikes_are_left_alone(detector: Detector, text: str) -> None:
    assert found(detector, text) == []


def test_a_tenants_deny_list_and_patterns_are_found_too(detector: Detector) -> None:
    policy = PiiPolicy(deny_list=("Kim Lee",), patterns=({"entity": "MEMBER_ID", "regex": r"\bMB-\d{6}\b"},))
    text = "Kim Lee, member MB-123456, wrote."
    assert found(detector, text, policy) == [("DENY_LIST", "Kim Lee"), ("MEMBER_ID", "MB-123456")]
    assert found(detector, text) == []  # another tenant's words are not this one's


def test_placeholders_number_each_value_once_and_restore_it() -> None:
    text = f"{EMAIL} and {EMAIL} and bo@example.org"
    spans = [(0, len(EMAIL)), (len(EMAIL) + 5, 2 * len(EMAIL) + 5), (2 * len(EMAIL) + 10, len(text))]
    findings = [type("F", (), {"entity": "EMAIL_ADDRESS", "start": s, "end": e})() for s, e in spans]
    placeholders = Placeholders()
    masked = placeholders.mask(text, findings)  # type: ignore[arg-type]
    assert masked == "<EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>"
    assert placeholders.restore(masked + " <EMAIL_ADDRESS_9>") == text + " <EMAIL_ADDRESS_9>"  # unknown: kept
    assert placeholders.restore_all({"to": ["<EMAIL_ADDRESS_2>"], "n": 1}) == {"to": ["bo@example.org"], "n": 1}
    assert scrubbed(text, findings) == "<EMAIL_ADDRESS> and <EMAIL_ADDRESS> and <EMAIL_ADDRESS>"  # type: ignore[arg-type]


def test_a_stream_is_restored_whole_wherever_it_is_split() -> None:
    placeholders = Placeholders()
    finding = type("F", (), {"entity": "PHONE_NUMBER", "start": 0, "end": len(PHONE)})()
    masked = "Call <PHONE_NUMBER_1> now, a<b and <HTML> stay. " + placeholders.mask(PHONE, [finding])  # type: ignore[list-item]
    for cut in range(1, len(masked)):
        for step in (cut, 1):
            restorer = StreamRestorer(placeholders)
            pieces = [masked[i : i + step] for i in range(0, len(masked), step)]
            out = [restorer.feed(p) for p in pieces] + [restorer.flush()]
            assert "".join(out) == placeholders.restore(masked)
    restorer = StreamRestorer(placeholders)
    assert restorer.feed("Hello <PHO") == "Hello "  # held only while it can still be a placeholder
    assert restorer.feed("TO> x") == "<PHOTO> x"


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    gw = start_gateway()
    for doc in (SENTIMENT, CONTACT):
        assert gw.admin("PUT", f"/templates/{doc['name']}", content=json.dumps(doc)).status_code == 201
    return gw


def policy(gw: RunningGateway, tenant: str, **body: object) -> httpx.Response:
    return gw.admin("PUT", f"/tenants/{tenant}/pii", json=body)


def test_mask_keeps_values_from_the_engine_and_restores_the_answer(gateway: RunningGateway, fake: FakeState) -> None:
    assert policy(gateway, "default", mode="mask").status_code == 200
    client = gateway.client()
    said = f"Write to {EMAIL} or {EMAIL}, call {PHONE}"
    answer = client.chat.completions.create(model="default", messages=[{"role": "user", "content": said}])
    sent = fake.requests[-1]["messages"][-1]["content"]
    assert EMAIL not in sent and PHONE not in sent
    assert sent == "Write to <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_1>, call <PHONE_NUMBER_2>"
    assert said.split()[:4] == (answer.choices[0].message.content or "").split()[2:6]  # the echo, restored
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": said}], stream=True, max_tokens=12
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert EMAIL in streamed and "<EMAIL_ADDRESS_1>" not in streamed
    text = gateway.post("/v1/completions", {"model": "default", "prompt": [said, "no data"]})
    assert EMAIL not in json.dumps(fake.requests[-1]) and text.status_code == 200
    ids = gateway.post("/v1/completions", {"model": "default", "prompt": [1, 2, 3]})
    assert ids.status_code == 400 and ids.json()["error"]["param"] == "prompt"  # cannot be screened


def test_mask_covers_template_inputs_and_restores_generated_output(gateway: RunningGateway, fake: FakeState) -> None:
    assert policy(gateway, "default", mode="mask").status_code == 200
    fake.json_reply = {"email": "<EMAIL_ADDRESS_1>"}
    answer = gateway.post("/v1/templates/contact", {"inputs": {"message": f"Kim, {EMAIL}"}})
    assert answer.status_code == 200 and answer.json()["output"] == {"email": EMAIL}
    assert EMAIL not in json.dumps(fake.requests[-1])
    fake.tokenize_calls = 0
    scored = gateway.post("/v1/templates/sent", {"inputs": {"text": f"positive, mail {EMAIL}"}})
    assert scored.status_code == 200
    why = gateway.post("/v1/templates/sent", {"inputs": {"text": "positive"}, "explain": "attributions"})
    assert why.status_code == 400 and why.json()["error"]["param"] == "explain"


def test_block_refuses_with_the_entity_types_and_never_the_values(gateway: RunningGateway, fake: FakeState) -> None:
    assert policy(gateway, "default", mode="block", deny_list=["Kim Lee"]).status_code == 200
    before = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().chat.completions.create(
            model="default", messages=[{"role": "user", "content": f"Kim Lee: {EMAIL}"}]
        )
    error = refused.value.body
    assert error["code"] == "pii_detected" and error["param"] == "messages"
    assert "DENY_LIST" in error["message"] and "EMAIL_ADDRESS" in error["message"]
    assert EMAIL not in error["message"] and "Kim" not in error["message"] and len(fake.requests) == before
    ok = gateway.client().chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content
    blocked = gateway.post("/v1/templates/contact", {"inputs": {"message": f"call {PHONE}"}})
    assert blocked.status_code == 400 and blocked.json()["error"]["param"] == "inputs"


def test_log_scrubs_what_the_engine_quotes_in_an_error(gateway: RunningGateway, fake: FakeState) -> None:
    fake.refuse_next = f"Invalid prompt near '{EMAIL}'"
    refused = gateway.post("/v1/completions", {"model": "default", "prompt": "hello"})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "Invalid prompt near '<EMAIL_ADDRESS>'"  # the default: log
    assert policy(gateway, "default", mode="off").status_code == 200
    fake.refuse_next = f"Invalid prompt near '{EMAIL}'"
    assert EMAIL in gateway.post("/v1/completions", {"model": "default", "prompt": "x"}).json()["error"]["message"]


def test_detection_that_fails_refuses_the_request(
    gateway: RunningGateway, fake: FakeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert policy(gateway, "default", mode="mask").status_code == 200

    def broken(self: Detector, text: str, policy: PiiPolicy) -> list:
        raise RuntimeError("the detector broke")

    monkeypatch.setattr(Detector, "find", broken)
    before = len(fake.requests)
    refused = gateway.post(
        "/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": EMAIL}]}
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "pii_detection_failed"
    assert len(fake.requests) == before  # nothing reached the engine


def test_the_policy_is_the_operators_to_set_and_the_tenants_to_read(gateway: RunningGateway) -> None:
    client = new_tenant(gateway, "acme", {"base": True}, alias="chat")
    assert policy(gateway, "acme", mode="mask", patterns=[{"entity": "MEMBER_ID", "regex": "MB-\\d+"}]).json() == {
        "mode": "mask",
        "deny_list": [],
        "patterns": [{"entity": "MEMBER_ID", "regex": "MB-\\d+", "score": 0.9}],
    }
    own = httpx.get(gateway.url + "/v1/pii", headers={"Authorization": f"Bearer {client.api_key}"}).json()
    assert own["mode"] == "mask"
    assert httpx.get(gateway.url + "/v1/pii", headers={"Authorization": f"Bearer {API_KEY}"}).json()["mode"] == "log"
    admin = tenant_admin_key(gateway, "acme")
    assert call_as(gateway, admin, "GET", "/admin/tenants/acme/pii").json()["mode"] == "mask"
    assert call_as(gateway, admin, "PUT", "/admin/tenants/acme/pii", json={"mode": "off"}).status_code == 403
    assert call_as(gateway, admin, "GET", "/admin/tenants/default/pii").status_code == 404
    bad = policy(gateway, "acme", mode="mask", patterns=[{"entity": "X", "regex": "("}])
    assert bad.status_code == 400 and "patterns" in bad.json()["error"]["param"]
    assert policy(gateway, "acme", mode="sometimes").json()["error"]["param"] == "mode"
    assert policy(gateway, "nobody", mode="mask").status_code == 404


def test_the_distill_cache_keeps_no_personal_data_unless_the_policy_is_off(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    from adaptserve.training.distill import Teacher, TeacherCache, teacher_scrub

    teacher = Teacher(gateway.url, API_KEY, template="sent")
    cache = TeacherCache(tmp_path / "teacher.jsonl", teacher_scrub(teacher))  # the default policy: log
    record = {"key": "k1", "inputs": {"text": f"mail {EMAIL}"}, "label": "positive", "output": f"to {EMAIL}"}
    cache.add([record])
    stored = json.loads((tmp_path / "teacher.jsonl").read_text())
    assert stored == record | {"inputs": {"text": "mail <EMAIL_ADDRESS>"}, "output": "to <EMAIL_ADDRESS>"}
    assert cache.answers["k1"] == record  # this run learns from what the teacher said
    assert TeacherCache(tmp_path / "teacher.jsonl").answers["k1"] == stored  # a resumed run: the scrubbed text
    assert policy(gateway, "default", mode="off").status_code == 200
    assert teacher_scrub(teacher) is None


def test_tools_tool_calls_and_number_inputs_are_screened_too(gateway: RunningGateway, fake: FakeState) -> None:
    assert policy(gateway, "default", mode="mask").status_code == 200
    call = {"id": "c1", "type": "function", "function": {"name": "send", "arguments": json.dumps({"to": EMAIL})}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "mail Kim"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL}"},
    ]
    tools = [{"type": "function", "function": {"name": "send", "description": f"default: {PHONE}"}}]
    answer = gateway.post("/v1/chat/completions", {"model": "default", "messages": messages, "tools": tools})
    assert answer.status_code == 200, answer.text
    sent = json.dumps(fake.requests[-1])
    assert EMAIL not in sent and PHONE not in sent and "<EMAIL_ADDRESS_1>" in sent
    doc = SENTIMENT | {"name": "counted", "inputs": {"text": {"type": "string"}, "n": {"type": "integer"}}}
    assert gateway.admin("PUT", "/templates/counted", content=json.dumps(doc)).status_code == 201
    number = gateway.post("/v1/templates/counted", {"inputs": {"text": "ok", "n": 4111111111111111}})
    assert number.status_code == 400 and number.json()["error"]["param"] == "inputs"  # a card as a number
    assert gateway.post("/v1/templates/counted", {"inputs": {"text": "ok", "n": 3}}).status_code == 200


def test_text_held_back_at_a_streams_end_is_not_lost() -> None:
    import asyncio

    from adaptserve.serving.privacy import restoring

    placeholders = Placeholders()
    finding = type("F", (), {"entity": "EMAIL_ADDRESS", "start": 0, "end": len(EMAIL)})()
    placeholders.mask(EMAIL, [finding])  # type: ignore[list-item]

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        event = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(event)}\n\n".encode()

    async def relay(stream: object, call: object):  # vLLM's chunks: a placeholder cut, then an empty last delta
        for event in (chunk({"content": "to <EMAIL_"}), chunk({"content": "ADDRESS_1> <EM"}), chunk({}, "stop")):
            yield event
        yield b"data: [DONE]\n\n"

    async def read() -> str:
        texts = []
        async for event in restoring(relay, placeholders)(None, None):  # type: ignore[arg-type]
            line = event.decode().strip()
            if line != "data: [DONE]":
                texts.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
        return "".join(texts)

    assert asyncio.run(read()) == f"to {EMAIL} <EM"


# Every string the engine reads is screened: object keys, roles, names, stop strings,
# constraints and schemas too. (field, the body's extra fields, mask's status)
SCHEMA = {"type": "object", "properties": {"to": {"type": "string", "description": f"write to {EMAIL}"}}}
TOOL = {"type": "function", "function": {"name": "send", "description": f"mail {EMAIL}", "parameters": SCHEMA}}
HIDDEN = {
    "role": ({"messages": [{"role": f"user {EMAIL}", "content": "hi"}]}, 400),
    "message name": ({"messages": [{"role": "user", "name": EMAIL, "content": "hi"}]}, 200),
    "chat_template_kwargs key": ({"chat_template_kwargs": {EMAIL: "x"}}, 400),
    "structured_outputs.choice": ({"structured_outputs": {"choice": ["yes", EMAIL]}}, 400),
    "structured_outputs.regex": ({"structured_outputs": {"regex": EMAIL.replace(".", "\\.")}}, 400),
    "stop": ({"stop": [EMAIL]}, 400),
    "response_format schema": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}},
        200,
    ),
    "tool description": ({"tools": [TOOL]}, 200),
    "an unknown field": ({"vllm_xargs": {"note": EMAIL}}, 400),
    "a top-level key": ({EMAIL: 1}, 400),
}


def _hidden_body(extra: dict) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} | extra


@pytest.mark.parametrize("field", list(HIDDEN))
def test_block_refuses_personal_data_in_any_field_the_engine_reads(
    gateway: RunningGateway, fake: FakeState, field: str
) -> None:
    assert policy(gateway, "default", mode="block").status_code == 200
    before = len(fake.requests)
    refused = gateway.post("/v1/chat/completions", _hidden_body(HIDDEN[field][0]))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "pii_detected", refused.text
    assert EMAIL not in refused.text and len(fake.requests) == before  # the engine saw nothing


@pytest.mark.parametrize("field", list(HIDDEN))
def test_mask_never_lets_personal_data_reach_the_engine_through_any_field(
    gateway: RunningGateway, fake: FakeState, field: str
) -> None:
    """A field a placeholder can stand in for is masked (and restored); one it cannot
    (a key, a role, a stop string, a constraint) is refused."""
    assert policy(gateway, "default", mode="mask").status_code == 200
    extra, status = HIDDEN[field]
    answer = gateway.post("/v1/chat/completions", _hidden_body(extra))
    assert answer.status_code == status, answer.text
    if status == 400:
        assert answer.json()["error"]["code"] == "pii_detected" and EMAIL not in answer.text
    assert all(EMAIL not in json.dumps(sent) for sent in fake.requests)
    if status == 200:
        assert "<EMAIL_ADDRESS_1>" in json.dumps(fake.requests[-1])  # masked, not dropped


def test_every_string_and_key_of_a_body_is_screened_and_masked_only_where_a_placeholder_can_stand() -> None:
    """The SECURITY.md table: each field's strings, as `screening.leaves` classifies them."""
    schema = {
        "type": "object",
        "description": "m-sd",
        "properties": {"description": {"type": "f-st", "enum": ["m-en"]}},
    }
    body = {
        "model": "not-screened",
        "cache_salt": "not-screened-either",
        "prompt": ["m-p"],
        "messages": [
            {"role": "f-role", "name": "m-name", "content": [{"type": "f-type", "text": "m-text"}]},
            {
                "role": "f-role2",
                "content": "m-content",
                "tool_calls": [{"id": "f-id", "function": {"name": "f-fn", "arguments": "m-args"}}],
            },
        ],
        "tools": [{"type": "f-tt", "function": {"name": "f-tn", "description": "m-td", "parameters": schema}}],
        "tool_choice": {"type": "f-tc", "function": {"name": "f-tcn"}},
        "response_format": {"type": "f-rt", "json_schema": {"name": "f-rn", "description": "m-rd", "schema": "f-json"}},
        "structured_outputs": {
            "choice": ["f-ch"],
            "regex": "f-re",
            "grammar": "f-gr",
            "json": {"pattern": "f-pat", "title": "m-ti"},
        },
        "stop": ["f-stop"],
        "documents": [{"title": "m-doc"}],
        "chat_template_kwargs": {"who": "m-ctk", "deep": {"x": ["m-ctk2"]}},
        "chat_template": "f-ct",
        "vllm_xargs": {"k": "f-x"},
    }
    kinds = {leaf.text: leaf.kind.value for leaf in leaves(body)}
    assert "not-screened" not in kinds and "not-screened-either" not in kinds  # the gateway replaces them
    masked = {text for text, kind in kinds.items() if kind == "mask"}
    assert masked == {"m-p", "m-name", "m-text", "m-content", "m-args", "m-td", "m-sd", "m-en", "m-rd", "m-ti"} | {
        "m-doc",
        "m-ctk",
        "m-ctk2",
    }
    keys = {"who", "deep", "x", "description", "properties", "k", "title", "vllm_xargs", "model", "role"}
    assert all(kinds[text] == "fixed" for text in kinds if text.startswith("f-") or text in keys)
    replaced = rebuilt(body, [leaf.text.upper() if leaf.kind.value == "mask" else leaf.text for leaf in leaves(body)])
    assert replaced["messages"][1]["content"] == "M-CONTENT" and replaced["model"] == "not-screened"
