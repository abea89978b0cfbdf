"""A fine-tuned encoder on a real pooling engine: `adaptserve train --method encoder`
fine-tunes the bundled all-MiniLM-L6-v2 for a few steps on Rotten Tomatoes sentences
(a `BertForSequenceClassification` folder with its manifest), then one gateway serves
it as a `models:` entry of role classify and answers a template that names it. The
gateway's generate model is the fake engine (in a thread), so this module starts ONE
vLLM engine: the classify model's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from adaptserve.bench.fake_engine import BASE, FakeState, create_fake_vllm
from adaptserve.cli import main as cli_main
from adaptserve.datasets import load_dataset
from tests.helpers import Server, ServerThread, make_base, pooling_engine, run_template, running_server

LABELS = ["negative", "positive"]
STEPS = 12


def _texts(split: str, per_label: int) -> list[tuple[str, str]]:
    examples = list(load_dataset("rotten-tomatoes", split))
    return [(e.text, e.label) for label in LABELS for e in [x for x in examples if x.label == label][:per_label]]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tune: 12 steps of 8 over 64 balanced training sentences (seconds)."""
    work = tmp_path_factory.mktemp("encoder")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in _texts("train", 32)))
    out = work / "rt-encoder"
    argv = ["train", "--method", "encoder", "--data", str(data), "--name", "rt-encoder", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        cli_main([*argv, "--max-steps", str(STEPS), "--lr", "1e-4"])
    assert done.value.code == 0
    return out


@pytest.fixture(scope="module")
def classify_server(encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The gateway with the fake LLM (a thread) and the encoder as classify model
    `rt-encoder` (a supervised pooling engine, the only vLLM process here)."""
    fake = ServerThread(create_fake_vllm(FakeState())).start()
    data = tmp_path_factory.mktemp("classify")
    base = make_base(data / BASE)
    settings = {"models": [{"name": "rt-encoder", "role": "classify", "path": str(encoder_dir)}]}
    (data / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    args = ["--config", str(data / "adaptserve.yaml"), "--model", str(base), "--upstream", fake.url]
    try:
        with running_server(data, args) as srv:
            yield srv
            pooling = pooling_engine(srv, "rt-encoder", "classify")[1]
            tree = [pooling, *pooling.children(recursive=True)]
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"the classify engine outlived the gateway: {alive}"
    finally:
        fake.stop()


def test_train_method_encoder_writes_a_sequence_classifier(encoder_dir: Path) -> None:
    config = json.loads((encoder_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    manifest = json.loads((encoder_dir / "adaptserve-manifest.json").read_text())
    assert manifest["method"] == "encoder" and manifest["steps"] == STEPS and manifest["examples"] == 64
    assert manifest["class_weights"] == [1.0, 1.0] and manifest["weights"]["sha256"]
    assert (encoder_dir / "model.safetensors").stat().st_size > 80_000_000  # every layer, not an adapter


def test_an_encoder_template_answers_through_the_gateway_as_transformers_does(
    classify_server: Server, encoder_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    template = {
        "name": "rt-encoder",
        "kind": "classify",
        "encoder": "rt-encoder",
        "inputs": {"text": {"type": "string", "max_length": 2000}},
        "labels": [{"name": "positive"}, {"name": "negative"}],  # not the model's order
    }
    put = classify_server.admin("PUT", "/templates/rt-encoder", json=template)
    assert put.status_code == 201, put.text
    texts = [t for t, _ in _texts("test", 4)]
    started = time.perf_counter()
    answer = run_template(classify_server, "rt-encoder", {"inputs": [{"text": t} for t in texts]})
    assert answer.status_code == 200, answer.text
    assert time.perf_counter() - started < 30
    model = AutoModelForSequenceClassification.from_pretrained(encoder_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = torch.softmax(logits, dim=-1).numpy()
    got = np.array([[r["scores"]["negative"], r["scores"]["positive"]] for r in answer.json()["results"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [r["label"] for r in answer.json()["results"]] == [LABELS[i] for i in expected.argmax(axis=1)]
    wrong = template | {"name": "wrong", "labels": [{"name": "yes"}, {"name": "no"}]}
    assert classify_server.admin("PUT", "/templates/wrong", json=wrong).status_code == 400
    ready = classify_server.client().models.list().data
    assert "rt-encoder" in [m.id for m in ready]


def test_the_classify_engine_runs_the_pooling_runner(classify_server: Server, encoder_dir: Path) -> None:
    _, process = pooling_engine(classify_server, "rt-encoder", "classify")
    assert str(encoder_dir) in process.cmdline() and "pooling" in process.cmdline()
