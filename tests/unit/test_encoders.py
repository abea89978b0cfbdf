"""Classify models (`models:` role classify) and the templates that name them
(`encoder:`), on the fake engine's `/classify` (its logits are deterministic:
`fake_class_logits`): settings and labels, one engine call per template call (with its
attribution variants), probabilities under the template's labels, metering, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from adaptserve.bench.fake_engine import FakeState, fake_class_logits
from adaptserve.config import Settings
from adaptserve.engine_settings import ModelEntry
from adaptserve.errors import ConfigurationError
from adaptserve.serving.engines import Engines
from tests.helpers import (
    API_KEY,
    FAKE_ENCODER,
    RunningGateway,
    assert_openai_error,
    run_template,
    wait_for_usage,
)

CLASSES = ["negative", "neutral", "positive"]  # the fake classifier's id2label, in its order


def _entry(encoder: FakeState, **extra: Any) -> dict[str, Any]:
    entry = {"name": "clf", "role": "classify", "upstreams": [encoder.url], "served_model_name": FAKE_ENCODER}
    return entry | {"labels": CLASSES} | extra


@pytest.fixture
def clf_gateway(start_gateway: Any, encoder: FakeState) -> RunningGateway:
    encoder.classes = CLASSES
    return start_gateway(models=[_entry(encoder)])


def _template(name: str = "mood", encoder: str = "clf", labels: list[str] = CLASSES, **changes: Any) -> dict[str, Any]:
    doc = {"name": name, "kind": "classify", "encoder": encoder, "inputs": {"text": {}}}
    return doc | {"labels": [{"name": n} for n in labels]} | changes


def _put(gw: RunningGateway, doc: dict[str, Any]) -> Any:
    return gw.admin("PUT", f"/templates/{doc['name']}", json=doc)


def _expected(texts: list[str], order: list[str]) -> np.ndarray:
    logits = np.array([fake_class_logits(t.split(), len(CLASSES)) for t in texts])
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p[:, [CLASSES.index(n) for n in order]]


# -- settings ------------------------------------------------------------------------------
def test_a_classify_entry_needs_its_labels_when_remote_and_embed_takes_none() -> None:
    with pytest.raises(ValidationError, match="needs its labels"):
        ModelEntry(name="c", role="classify", upstreams=["http://x:1"])
    with pytest.raises(ValidationError, match="labels are for role classify"):
        ModelEntry(name="e", role="embed", upstreams=["http://x:1"], labels=["a", "b"])
    with pytest.raises(ValidationError, match="distinct"):
        ModelEntry(name="c", role="classify", upstreams=["http://x:1"], labels=["a", "a"])


def _classifier_folder(path: Path, id2label: dict[str, str] | None) -> str:
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"]} | ({"id2label": id2label} if id2label else {}))
    )
    return str(path)


def test_a_served_classifier_takes_its_labels_from_its_config(tmp_path: Path) -> None:
    folder = _classifier_folder(tmp_path / "enc", {"1": "pos", "0": "neg"})
    settings = Settings(data_dir=tmp_path, models=[{"name": "c", "role": "classify", "path": folder}])
    engine = Engines.build(settings).get("c")
    assert engine is not None and engine.labels == ["neg", "pos"]  # by id, not by the file's order
    assert engine.supervisor is not None and "--runner" in engine.supervisor.command()
    wrong = Settings(
        data_dir=tmp_path, models=[{"name": "c", "role": "classify", "path": folder, "labels": ["pos", "neg"]}]
    )
    with pytest.raises(ConfigurationError, match="id2label"):
        Engines.build(wrong)
    plain = _classifier_folder(tmp_path / "plain", None)
    with pytest.raises(ConfigurationError, match="not a classifier"):
        Engines.build(Settings(data_dir=tmp_path, models=[{"name": "c", "role": "classify", "path": plain}]))


# -- encoder templates -------------------------------------------------------------------------
def test_an_encoder_template_answers_from_one_classify_call(clf_gateway: RunningGateway, encoder: FakeState) -> None:
    order = ["positive", "negative", "neutral"]  # the template's order, not the model's
    assert _put(clf_gateway, _template(labels=order)).status_code == 201
    texts = ["the cat sat on the mat", "a b c", "dull and slow"]
    before = len(encoder.requests)
    answer = run_template(clf_gateway, "mood", {"inputs": [{"text": t} for t in texts]})
    assert answer.status_code == 200, answer.text
    assert len(encoder.requests) == before + 1
    sent = encoder.requests[-1]
    assert sent["input"] == texts and sent["use_activation"] is False and sent["model"] == FAKE_ENCODER
    for result, row in zip(answer.json()["results"], _expected(texts, order), strict=True):
        assert list(result["scores"]) == order
        assert list(result["scores"].values()) == pytest.approx(row.tolist(), abs=1e-9)
        assert result["label"] == order[int(row.argmax())]
        assert result["encoder"] == {"model": "clf"} and result["calibrated"] is False
    one = run_template(clf_gateway, "mood", {"inputs": {"text": texts[0]}, "explain": True}).json()
    assert one["explain"]["scoring"] == "encoder"
    assert one["explain"]["logits"]["negative"] == pytest.approx(fake_class_logits(texts[0].split(), 3)[0])
    rows = wait_for_usage(clf_gateway, API_KEY, requests=2)
    assert {(r["model"], r["template"]) for r in rows} == {("clf", "mood")}
    assert sum(r["prompt_tokens"] for r in rows) == sum(len(t.split()) + 2 for t in [*texts, texts[0]])


def test_attributions_of_an_encoder_template_come_from_one_call(
    clf_gateway: RunningGateway, encoder: FakeState
) -> None:
    _put(clf_gateway, _template())
    before = len(encoder.requests)
    answer = run_template(clf_gateway, "mood", {"inputs": {"text": "good fun film"}, "explain": "attributions"})
    assert answer.status_code == 200, answer.text
    assert len(encoder.requests) == before + 1
    sent = encoder.requests[-1]["input"]
    assert [t.split() for t in sent] == [["good", "fun", "film"], ["fun", "film"], ["good", "film"], ["good", "fun"]]
    probs = _expected(sent, CLASSES)
    best = int(probs[0].argmax())
    for i, span in enumerate(answer.json()["explain"]["attributions"]["spans"]):
        assert span["contribution"] == pytest.approx(probs[0, best] - probs[i + 1, best], abs=1e-9)


def test_an_encoder_template_is_refused_unless_its_model_and_labels_fit(clf_gateway: RunningGateway) -> None:
    assert_openai_error(_put(clf_gateway, _template(labels=["yes", "no"])), 400, "encoder_mismatch", "labels")
    assert_openai_error(_put(clf_gateway, _template(encoder="nope")), 400, "encoder_mismatch", "encoder")
    assert_openai_error(_put(clf_gateway, _template(head="h")), 400)  # a head or an encoder, not both
    assert_openai_error(_put(clf_gateway, _template(examples=[{"inputs": {"text": "x"}, "label": "neutral"}])), 400)
    assert_openai_error(_put(clf_gateway, _template(kind="generate", labels=[])), 400)
    assert _put(clf_gateway, _template()).status_code == 201
    assert clf_gateway.client().models.list().data[-1].id == "clf"
    refused = clf_gateway.post("/v1/embeddings", {"model": "clf", "input": "x"})
    assert_openai_error(refused, 400, "model_not_embedding", "model")
    chat = clf_gateway.post("/v1/chat/completions", {"model": "clf", "messages": [{"role": "user", "content": "x"}]})
    assert "classify model" in assert_openai_error(chat, 400, "model_not_generative", "model")["message"]
    described = clf_gateway.post("/v1/templates/mood", None)
    assert described.status_code == 400


def test_a_tenant_that_may_not_call_the_model_gets_a_400(start_gateway: Any, encoder: FakeState) -> None:
    encoder.classes = CLASSES
    gw = start_gateway(models=[_entry(encoder, tenants=["someone-else"])])
    assert _put(gw, _template()).status_code == 201  # a global template: the operator's, any model
    answer = run_template(gw, "mood", {"inputs": {"text": "fine"}})
    assert_openai_error(answer, 400, "encoder_mismatch", "encoder")
    # A tenant's own template may not name it: refused as a model that does not exist, its classes unshown.
    assert gw.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    mine = _template(name="mine", labels=["x", "y"])
    refused = gw.admin("PUT", "/templates/mine", json=mine, params={"tenant": "acme"})
    assert_openai_error(refused, 400, "encoder_mismatch", "encoder")
    assert not any(name in refused.json()["error"]["message"] for name in CLASSES)


# -- training: the parts without weights -------------------------------------------------------
def test_class_weights_make_each_class_count_alike_and_unknown_labels_are_refused() -> None:
    from adaptserve.training.encoder import class_weights, hard_targets

    targets = hard_targets(["a", "a", "a", "b"], ["b", "a", "c"])
    assert targets.tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]]
    weights = class_weights(targets)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3, 1.0])  # n / (classes seen × count); unseen: 1
    assert (weights * targets.sum(axis=0))[:2].tolist() == pytest.approx([2.0, 2.0])  # a and b weigh alike
    with pytest.raises(ConfigurationError, match=r"\['z'\]"):
        hard_targets(["a", "z"], ["a", "b"])


def test_distill_student_names_the_method_and_is_checked_before_the_teacher(
    embed_gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptserve.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "unlabelled.txt"
    inputs.write_text("good good\nbad bad\n")
    template = tmp_path / "student.json"
    template.write_text(json.dumps(_template(labels=["bad", "good"])))
    argv = ["distill", "--inputs", str(inputs), "--teacher-template", "teacher", "--template", str(template)]
    argv += ["--teacher-url", embed_gateway.url, "--teacher-key", API_KEY]
    with pytest.raises(SystemExit, match="needs --embedding-model and --name"):
        cli_main([*argv, "--student", "head"])  # --student head is --method head
    with pytest.raises(SystemExit, match="needs --name"):
        cli_main([*argv, "--student", "encoder"])
    with pytest.raises(SystemExit, match="--student encoder and --method head: give one"):
        cli_main([*argv, "--student", "encoder", "--method", "head", "--name", "s"])
    assert not list(tmp_path.glob("*/*.teacher"))  # the teacher was never asked
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "good", "label": "good"}\n')
    with pytest.raises(SystemExit, match="is not pushed"):
        cli_main(["train", "--method", "encoder", "--data", str(data), "--name", "s", "--push", "--global"])


def test_a_sharpened_teacher_keeps_its_top_label() -> None:
    from adaptserve.training.encoder import sharpened

    teacher = np.array([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    sharp = sharpened(teacher, 0.5)
    assert sharp[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])  # squared, renormalised
    assert sharp.argmax(axis=1).tolist() == teacher.argmax(axis=1).tolist() and sharp[2].tolist() == [0.5, 0.5]
    assert sharpened(teacher, 1.0) == pytest.approx(teacher)
    with pytest.raises(ConfigurationError, match="above 0"):
        sharpened(teacher, 0)


def test_the_default_epochs_give_little_data_enough_steps() -> None:
    from adaptserve.training.encoder import MIN_STEPS, default_epochs

    assert default_epochs(2000, 16) == 3  # 125 steps an epoch: 375
    assert default_epochs(256, 16) == 10 and 10 * 16 >= MIN_STEPS > 9 * 16
    assert default_epochs(5, 16) == MIN_STEPS  # one step an epoch
