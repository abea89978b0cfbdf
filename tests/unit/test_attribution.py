"""Attributions of classify answers: units and their offsets, joining units to fit the
cap, the variants scored, occlusion and sampled Shapley read from their probabilities,
and `"explain": "attributions"` through the gateway in front of the fake vLLM (whose
label log-probability is -3 + the label word's occurrences in the prompt, so only the
label words in an input matter)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from adaptserve_client import Attributions, Client

from adaptserve.bench.fake_engine import FakeState
from adaptserve.errors import InvalidRequestError
from adaptserve.templates.attribution import AttributionOptions, Unit, fit, keep, plan, split
from tests.helpers import API_KEY, SENTIMENT, RunningGateway

REVIEW = "A fine film. Not positive at all!  Sadly, negative."


def test_words_and_sentences_carry_their_offsets() -> None:
    words = split({"text": REVIEW, "n": 3}, "words")
    assert [REVIEW[u.start : u.end] for u in words][:4] == ["A", "fine", "film.", "Not"]
    assert {u.field for u in words} == {"text"}  # a number is not text
    sentences = split({"text": REVIEW}, "sentences")
    assert [REVIEW[u.start : u.end] for u in sentences] == ["A fine film.", "Not positive at all!", "Sadly, negative."]
    assert split({"a": "x y", "b": "", "c": "z"}, "fields") == [Unit("a", 0, 3), Unit("c", 0, 1)]


def test_removing_a_unit_takes_its_space_and_keeps_the_rest_verbatim() -> None:
    units = split({"text": REVIEW}, "words")
    every = frozenset(range(len(units)))
    assert keep({"text": REVIEW}, units, every)["text"] == REVIEW
    assert keep({"text": REVIEW}, units, every - {1})["text"] == "A film. Not positive at all!  Sadly, negative."
    assert (
        keep({"text": REVIEW}, units, every - {len(units) - 1})["text"] == "A fine film. Not positive at all!  Sadly,"
    )
    assert keep({"text": REVIEW, "k": 1}, units, frozenset()) == {"text": "", "k": 1}


def test_units_over_the_cap_are_joined_within_their_field() -> None:
    units = split({"a": "one two three four five", "b": "six seven"}, "words")
    joined, merged = fit(units, 4)
    assert merged and len(joined) <= 4
    assert (joined[0].field, joined[0].start, joined[0].end) == ("a", 0, 7)  # "one two"
    assert sorted({u.field for u in joined}) == ["a", "b"]  # never across fields
    covered = [(u.field, i) for u in joined for i in range(u.start, u.end)]
    assert all((u.field, u.start) in covered for u in units)  # every word is in a unit
    assert fit(units, 7) == (units, False)


def test_occlusion_reads_each_units_removal() -> None:
    shown = plan({"text": "good positive film"}, AttributionOptions(), 48)
    assert shown.coalitions[0] == frozenset({0, 1, 2}) and len(shown.coalitions) == 4
    probs = {frozenset({0, 1, 2}): [0.2, 0.8], frozenset({1, 2}): [0.25, 0.75], frozenset({0, 2}): [0.6, 0.4]}
    probs[frozenset({0, 1})] = [0.2, 0.8]
    out = shown.explain([probs[c] for c in shown.coalitions], ["negative", "positive"])
    assert out["label"] == "positive" and out["runner_up"] == "negative" and out["probability"] == 0.8
    assert [s["contribution"] for s in out["spans"]] == pytest.approx([0.05, 0.4, 0.0])
    assert [s["margin"] for s in out["spans"]] == pytest.approx([0.1, 0.8, 0.0])


def test_shapley_contributions_add_up_to_the_change_from_nothing() -> None:
    options = AttributionOptions(method="shapley", permutations=5)
    shown = plan({"text": "w0 w1 w2 w3"}, options, 48)
    assert shown == plan({"text": "w0 w1 w2 w3"}, options, 48)  # seeded by the input
    assert len(shown.orders) == 5 and frozenset() in shown.coalitions

    def value(kept: frozenset[int]) -> list[float]:  # not additive: an interaction of w0 and w1
        p = 0.1 + 0.1 * len(kept) + (0.3 if {0, 1} <= kept else 0.0)
        return [1 - p, p]

    out = shown.explain([value(c) for c in shown.coalitions], ["no", "yes"])
    assert sum(s["contribution"] for s in out["spans"]) == pytest.approx(out["probability"] - out["baseline"])
    assert out["baseline"] == pytest.approx(0.1) and out["permutations"] == 5
    spans = out["spans"]
    # every order credits the interaction to whichever of w0, w1 comes second
    assert spans[0]["contribution"] + spans[1]["contribution"] == pytest.approx(0.5)
    assert [spans[2]["contribution"], spans[3]["contribution"]] == pytest.approx([0.1, 0.1])


def test_nothing_to_attribute_is_a_400() -> None:
    with pytest.raises(InvalidRequestError):
        plan({"text": "   "}, AttributionOptions(), 48)


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    gw = start_gateway(explain_max_units=6, explain_max_prompts=40)
    assert gw.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT)).status_code == 201
    return gw


def score(gateway: RunningGateway, text: str, label: str = "positive") -> float:
    return gateway.post("/v1/templates/sent", {"inputs": {"text": text}}).json()["scores"][label]


def test_occlusion_through_the_gateway_is_what_removing_the_word_does(gateway: RunningGateway, fake: FakeState) -> None:
    text = "a positive and positive film"
    fake.requests.clear()
    answer = gateway.post("/v1/templates/sent", {"inputs": {"text": text}, "explain": "attributions"}).json()
    shown = answer["explain"]["attributions"]
    scoring = [r for r in fake.requests if "logprob_token_ids" in r]
    assert len(scoring) == 1 and len(scoring[0]["prompt"]) == 6 == shown["prompts"]  # whole + 5 words, one call
    assert answer["usage"]["completion_tokens"] == 6  # every scored prompt is metered
    assert shown["label"] == answer["label"] == "positive" and not shown["merged"]
    assert [text[s["start"] : s["end"]] for s in shown["spans"]] == text.split()
    for span in shown["spans"]:
        without = (text[: span["start"]] + text[span["end"] :].lstrip()).rstrip()
        assert span["contribution"] == pytest.approx(answer["scores"]["positive"] - score(gateway, without))
    assert [s["contribution"] > 0 for s in shown["spans"]] == [False, True, False, True, False]


def test_shapley_through_the_gateway_adds_up_and_starts_from_the_empty_input(gateway: RunningGateway) -> None:
    body = {"inputs": {"text": "positive film"}, "explain": "attributions"}
    body["attribution"] = {"method": "shapley", "permutations": 4}
    shown = gateway.post("/v1/templates/sent", body).json()["explain"]["attributions"]
    assert shown["baseline"] == pytest.approx(score(gateway, ""))
    assert sum(s["contribution"] for s in shown["spans"]) == pytest.approx(shown["probability"] - shown["baseline"])
    assert shown["spans"][1]["contribution"] == pytest.approx(0.0, abs=1e-9)  # "film" never moves the fake


def test_long_inputs_are_joined_to_the_cap_and_batches_to_the_prompt_limit(gateway: RunningGateway) -> None:
    text = "one two three four five six seven eight nine ten eleven twelve"
    answer = gateway.post("/v1/templates/sent", {"inputs": {"text": text}, "explain": "attributions"}).json()
    shown = answer["explain"]["attributions"]
    assert shown["merged"] and len(shown["spans"]) == 6 and shown["prompts"] == 7
    assert " ".join(text[s["start"] : s["end"]] for s in shown["spans"]) == text
    batch = {"inputs": [{"text": text}] * 6, "explain": "attributions"}  # 42 prompts > 40
    refused = gateway.post("/v1/templates/sent", batch)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "attribution"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"inputs": {"text": "x"}, "attribution": {"units": "sentences"}}, "attribution"),
        (
            {"inputs": {"text": "x"}, "explain": "attributions", "attribution": {"units": "letters"}},
            "attribution.units",
        ),
        (
            {"inputs": {"text": "x"}, "explain": "attributions", "attribution": {"permutations": 0}},
            "attribution.permutations",
        ),
        ({"inputs": {"text": "x"}, "explain": "why"}, "explain"),
        ({"inputs": {"text": " "}, "explain": "attributions"}, "inputs"),
    ],
)
def test_bad_attribution_calls_get_400_with_param(gateway: RunningGateway, body: dict, param: str) -> None:
    response = gateway.post("/v1/templates/sent", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_client_returns_attributions_typed(gateway: RunningGateway) -> None:
    inputs = {"text": "a positive film"}
    with Client(gateway.url, API_KEY) as client:
        plain = client.templates.run("sent", inputs)
        shown = client.templates.run("sent", inputs, explain="attributions", attribution={"units": "words"})
    assert plain.attributions is None
    assert isinstance(shown.attributions, Attributions) and shown.attributions.label == shown.label
    assert [s.text(inputs) for s in shown.attributions.spans] == ["a", "positive", "film"]
    assert shown.attributions.top(1)[0].text(inputs) == "positive"
