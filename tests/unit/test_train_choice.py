"""`train` chooses the served template's scoring as `fit` does: calibration (none,
content-free, or label-balanced real inputs) and temperature on its held-out slice,
with `choose` from `templates/calibration.py`; `calibration: auto` in a template; and
the template `train --push` applies carries the choice. Pure functions and the
in-process gateway: no model weights."""

from __future__ import annotations

import argparse
import math
import random
from typing import Any

import pytest

from adaptserve.errors import InvalidRequestError
from adaptserve.templates.spec import load_document, parse_document
from tests.helpers import ADMIN_KEY

DOC: dict[str, Any] = {
    "name": "spam",
    "kind": "classify",
    "instruction": "Is this message spam?",
    "inputs": {"text": {"max_length": 50}},
    "labels": [{"name": "ham"}, {"name": "spam"}],
    "calibration": True,
}


def _rows(n: int, shift: float, seed: int) -> tuple[list[list[float]], list[int]]:
    """Two-label log-scores whose truth is a coin of probability p, pushed `shift`
    nats towards label 1 (a bias the right calibration divides out)."""
    rng = random.Random(seed)
    rows, gold = [], []
    for _ in range(n):
        p = rng.uniform(0.05, 0.95)
        gold.append(1 if rng.random() < p else 0)
        rows.append([0.0, math.log(p / (1 - p)) + shift])
    return rows, gold


def test_train_picks_real_inputs_where_they_help_and_none_where_calibration_hurts() -> None:
    from adaptserve.training.served import choice

    spec = parse_document(DOC)
    rows, gold = _rows(400, shift=2.0, seed=1)
    # Real inputs show the +2 bias; the content-free ones lean the other way (an empty
    # message reads as ham), so dividing them out makes the bias worse.
    biases = {"content-free": [[1.5, 0.0]] * 3, "training": [r for r in rows[:16]]}
    made = choice(rows, gold, biases, spec)
    assert made["chosen"]["calibration"] == "training"
    assert made["options"]["training"]["accuracy"] > made["options"]["none"]["accuracy"]
    assert made["options"]["content-free"]["accuracy"] < made["options"]["training"]["accuracy"]
    assert made["as_written"]["calibration"] == "content-free"  # `calibration: true`, no inputs of its own
    assert made["as_written"]["accuracy"] == made["options"]["content-free"]["accuracy"]
    # A confident, right adapter: every bias is lopsided and dividing it out flips right answers.
    confident = [[0.0, 6.0] if g else [4.0, 0.0] for g in gold]
    made = choice(confident, gold, {"content-free": [[0.0, 9.0]], "training": [[0.0, 8.0], [0.0, 7.0]]}, spec)
    assert made["chosen"]["calibration"] is None
    assert made["options"]["none"]["accuracy"] == 1.0
    assert made["as_written"]["accuracy"] < 1.0  # what the template as written would have served


def test_calibration_auto_parses_round_trips_and_is_served_calibrated() -> None:
    spec = parse_document(DOC | {"calibration": "auto"})
    assert spec.calibration == "auto" and spec.calibrates
    assert spec.document()["calibration"] == "auto"
    assert parse_document(spec.document()) == spec
    yaml_doc = "\n".join(
        [
            "name: spam",
            "kind: classify",
            "instruction: Is this spam?",
            "inputs: {text: {}}",
            "labels: [{name: ham}, {name: spam}]",
            "calibration: auto",
        ]
    )
    assert load_document(yaml_doc).calibration == "auto"
    assert parse_document(DOC).calibrates and not parse_document(DOC | {"calibration": False}).calibrates
    # templates without the key keep their documents (and digests): the default is still `true`
    assert parse_document({k: v for k, v in DOC.items() if k != "calibration"}).document()["calibration"] is True
    with pytest.raises(InvalidRequestError, match="calibration"):
        parse_document(DOC | {"calibration": "sometimes"})


def _pushed(gateway: Any, name: str) -> dict[str, Any]:
    versions = gateway.admin("GET", f"/templates/{name}", params={"tenant": "acme"}).json()["versions"]
    return max(versions, key=lambda v: v["version"])["document"]


def test_what_train_pushes_carries_the_chosen_scoring(gateway: Any, adapters: Any) -> None:
    from adaptserve.cli.adapt import push
    from adaptserve.training.served import served_template

    gateway.admin("POST", "/tenants", json={"name": "acme"})
    spec = parse_document(DOC | {"calibration": "auto"})
    args = argparse.Namespace(
        url=gateway.url,
        admin_key=ADMIN_KEY,
        tenant_admin_key=None,
        global_=False,
        tenant="acme",
        alias="spam-lora",
        base=None,
    )
    long_text = "x" * 80  # longer than the input allows: cut as the server would refuse it
    chosen = {
        "chosen": {"calibration": "training", "temperature": 2.0},
        "calibration_inputs": [{"text": "win a prize now"}, {"text": long_text}],
    }
    pushed = push(
        argparse.Namespace(**vars(args), name="a1"),
        gateway.settings,
        adapters["alpha"],
        served_template(spec, chosen, "spam-lora"),
    )
    assert pushed["template"] == {"name": "spam", "tenant": "acme", "version": pushed["template"]["version"]}
    doc = _pushed(gateway, "spam")
    assert doc["model"] == "spam-lora" and doc["calibration"] is True and doc["temperature"] == 2.0
    assert doc["calibration_inputs"] == [{"text": "win a prize now"}, {"text": "x" * 50}]
    none = {"chosen": {"calibration": None, "temperature": 1.0}, "calibration_inputs": []}
    push(
        argparse.Namespace(**vars(args), name="a2"),
        gateway.settings,
        adapters["beta"],
        served_template(spec, none, "spam-lora"),
    )
    doc = _pushed(gateway, "spam")
    assert doc["calibration"] is False and "temperature" not in doc and "calibration_inputs" not in doc
    free = {"chosen": {"calibration": "content-free", "temperature": 0.5}, "calibration_inputs": []}
    push(
        argparse.Namespace(**vars(args), name="a3"),
        gateway.settings,
        adapters["beta"],
        served_template(spec, free, "spam-lora"),
    )
    doc = _pushed(gateway, "spam")
    assert doc["calibration"] is True and doc["temperature"] == 0.5 and "calibration_inputs" not in doc
