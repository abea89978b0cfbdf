"""`adaptserve eval`: the metrics' arithmetic, the datasets' fixed split, and the
command end to end against the gateway in front of the fake vLLM."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from adaptserve.cli import main
from adaptserve.datasets import load_dataset, read_labelled, split_of
from adaptserve.evaluation import expected_calibration_error, metrics
from tests.helpers import API_KEY, SENTIMENT, RunningGateway


def test_metrics_by_hand() -> None:
    labels = ["a", "b", "c"]
    gold = ["a", "a", "b", "b", "c", "c"]
    predicted = ["a", "b", "b", "b", "a", "c"]
    result = metrics(labels, gold, predicted, [1.0] * 6)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion"]["rows_gold_cols_predicted"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": 0.8, "support": 2}
    # F1: a = 0.5, b = 0.8, c = 2/3.
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_expected_calibration_error() -> None:
    # Two bins: 0.9-confident and right half the time (gap 0.4), 0.6-confident and right (gap 0.4).
    ece = expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, False, True, True])
    assert ece == pytest.approx(0.4)
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)


def test_the_split_is_a_fixed_function_of_the_text() -> None:
    assert split_of("a fine film") == split_of("a fine film")
    test = load_dataset("trec", "test")
    train = load_dataset("trec", "train")
    assert not {e.text for e in test} & {e.text for e in train}
    assert 0.15 < len(test) / (len(test) + len(train)) < 0.25
    assert load_dataset("rotten-tomatoes", "test")[:3] == load_dataset("rotten-tomatoes", "test")[:3]


def test_shipped_few_shot_examples_are_not_in_the_test_split() -> None:
    test = {e.text for e in load_dataset("rotten-tomatoes", "test")} | {e.text for e in load_dataset("trec", "test")}
    for path in (Path(__file__).parents[2] / "templates").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        used = [e["inputs"] for e in doc.get("examples", [])] + doc.get("calibration_inputs", [])
        assert not {v for inputs in used for v in inputs.values()} & test, path.name


def test_eval_command_reports_on_a_labelled_file(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gateway = start_gateway()
    gateway.admin("PUT", "/templates/sent", content=json.dumps(SENTIMENT))
    data = tmp_path / "labelled.csv"
    rows = ["review,gold", "positive positive,positive", "negative negative,negative", "positive,negative"]
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    argv = ["eval", "sent", "--data", str(data), "--text-field", "review", "--label-field", "gold"]
    argv += ["--url", gateway.url, "--key", API_KEY, "--out", str(out), "--batch", "2", "--explain", "1"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    report = json.loads((out / "sent-labelled.json").read_text())
    assert report["uncalibrated"]["accuracy"] == pytest.approx(2 / 3)
    assert report["uncalibrated"]["confusion"]["rows_gold_cols_predicted"] == [[1, 1], [0, 1]]
    assert report["throughput"]["inputs"] == 3
    assert next(out.glob("*.png")).stat().st_size > 1000
    assert "| uncalibrated | 0.667 |" in capsys.readouterr().out
    assert read_labelled(data, "review", "gold")[0].label == "positive"
    # --explain 1: the most confident answer ("positive positive", p 0.95 on the fake),
    # then the least ("negative negative", 0.73), each word shaded by its contribution
    rows = re.findall(
        r"<tr class=\"(\w+)\"><td>(\w+)</td><td>(\w+)</td>.*?</tr>", (out / "sent-labelled-explained.html").read_text()
    )
    assert rows == [("right", "positive", "positive"), ("right", "negative", "negative")]
    page = (out / "sent-labelled-explained.html").read_text()
    assert len(re.findall(r'title="\+0\.\d+">positive</span>', page)) == 2
    assert len(re.findall(r'title="\+0\.\d+">negative</span>', page)) == 2
