"""fit's `distilled-head` candidate (`fit/distilled.py`) without the engine: a head over
sentence vectors taught by the zero-shot template on unlabelled inputs, per outer fold
on its training part only; its units resumed; and, where it is fit's choice, served as
a classifier head through the gateway in front of the fake engines (the fake encoder's
vectors stand in for MiniLM's, in process and served)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaptserve.bench.fake_engine import FakeState, fake_embedding
from adaptserve.cli import main
from adaptserve.datasets import Example
from adaptserve.errors import ConfigurationError
from adaptserve.fit import baselines, candidates, distilled
from adaptserve.fit.candidates import Scored, zero_shot
from adaptserve.fit.results import rows, selection
from adaptserve.fit.run import Fit, FitConfig
from tests.helpers import ADMIN_KEY, API_KEY, RunningGateway, run_template

LABELS = ["negative", "positive"]
WORDS = {"positive": ["good", "great", "fine", "fun"], "negative": ["bad", "awful", "poor", "dull"]}


class _FakeMiniLM:
    """In place of all-MiniLM-L6-v2 in process: the fake encoder's vectors."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([fake_embedding(t.split()) for t in texts], dtype=np.float32)


@pytest.fixture(autouse=True)
def _fake_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines, "Embeddings", _FakeMiniLM)
    monkeypatch.setattr(baselines, "available", lambda name: True)


def _texts(n: int, seed: int, say_label: bool, tag: str) -> list[Example]:
    """Mood-word texts; with `say_label`, the label's own name too (the fake engine's
    zero-shot answer is the label its prompt says most)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 2]
        said = [label] if say_label else []
        out.append(Example(" ".join([*said, *rng.choice(WORDS[label], size=3), f"{tag}{i}"]), label))
    return out


class _Teacher:
    """The server as fit's teacher sees it, in process: a label's log-probability is
    high where the text says the label; every scored input recorded."""

    tenant = "default"

    def __init__(self) -> None:
        self.scored: list[str] = []

    def score(self, doc: dict[str, Any], inputs: list[dict[str, Any]]) -> Scored:
        self.scored += [i["text"] for i in inputs]
        rows = [[0.0 if label in i["text"].split() else -3.0 for label in LABELS] for i in inputs]
        return Scored(rows, 0.1, len(inputs), [0.01])

    def apply(self, doc: dict[str, Any], name: str) -> None: ...


def _fit(folder: Path, examples: list[Example], unlabelled: list[Example], **changes: Any) -> Fit:
    folder.mkdir(parents=True, exist_ok=True)
    config = FitConfig(folder, zero_shot(LABELS), "text", candidates=("minilm", "zero-shot", "distilled-head"))
    config = FitConfig(**(config.__dict__ | {"unlabelled": tuple(e.text for e in unlabelled)} | changes))
    return Fit(examples, config, _Teacher())  # type: ignore[arg-type]


def test_the_distilled_head_is_taught_and_chosen_on_each_folds_training_part(tmp_path: Path) -> None:
    examples, unlabelled = _texts(32, 0, True, "l"), _texts(40, 1, True, "u")
    fit = _fit(tmp_path, examples, unlabelled)
    assert fit.run() == []
    for fold in range(4):
        unit, zero = fit.units[("distilled-head", fold)], fit.units[("zero-shot", fold)]
        assert unit["kind"] == "baseline" and unit["unlabelled"] == 40
        assert unit["test"] == fit.folds.test(fold) and len(unit["probabilities"]) == len(unit["test"])
        assert unit["inner"]["indices"] == fit.folds.train(fold)  # its inner score: the training part's
        assert unit["teacher"]["scoring"] == zero["scoring"]  # the zero-shot candidate's, chosen on that part
        assert not set(zero["test"]) & set(zero["selection"])
        chosen = unit["inner"]["chosen"]["students"]
        assert unit["inner"]["accuracy"] == unit["students"][chosen] >= 0.9 and np.isfinite(unit["inputs_per_s"])
    # A teacher that is right on every unlabelled input: a student right on (nearly) every test example.
    rows_ = {r["candidate"]: r for r in rows(fit)}
    assert rows_["distilled-head"]["accuracy"] >= 0.9 and rows_["distilled-head"]["kind"] == "baseline"
    # The cheap side of the verdict: picked against the MiniLM baseline by the inner scores.
    assert set(selection(fit)["baseline"]["picks"].values()) <= {"minilm", "distilled-head"}


def test_the_gold_labels_join_the_teacher_where_the_inner_folds_say_they_help() -> None:
    rng = np.random.default_rng(0)
    x_unlabelled, x_train = rng.normal(size=(60, 6)), rng.normal(size=(40, 6))
    gold = (x_train[:, 0] > 0).astype(int)
    # A teacher that knows nothing (0.5 / 0.5 everywhere): only the gold rows teach.
    blind = np.full((60, 2), 0.5)
    _, facts = distilled.student(x_train, gold, x_unlabelled, blind, LABELS, seed=0)
    assert facts["students"] == "teacher+gold" and facts["scores"]["teacher+gold"] > 0.8
    assert facts["inner_accuracy"] == facts["scores"]["teacher+gold"]
    # A teacher that is the rule itself: the gold rows add nothing, and teacher-only is kept on a tie.
    right = np.eye(2)[(x_unlabelled[:, 0] > 0).astype(int)]
    _, facts = distilled.student(x_train, gold, x_unlabelled, right, LABELS, seed=0)
    assert facts["scores"]["teacher"] >= facts["scores"]["teacher+gold"] - 0.05
    if facts["scores"]["teacher"] >= facts["scores"]["teacher+gold"]:
        assert facts["students"] == "teacher"


def test_no_test_fold_label_reaches_a_choice_of_the_distilled_head(tmp_path: Path) -> None:
    # Texts that do not say their label: the teacher is unsure, so the choices lean on the gold labels.
    examples, unlabelled = _texts(32, 2, False, "l"), _texts(24, 3, True, "u")
    runs = {}
    for name in ("plain", "test-flipped", "train-flipped"):
        fit = _fit(tmp_path / name, examples, unlabelled, candidates=("zero-shot", "distilled-head"))
        flip = {"plain": [], "test-flipped": fit.folds.test(0), "train-flipped": fit.folds.train(0)[:6]}[name]
        for i in flip:  # after the folds are made: the same folds, other labels
            fit.gold[i] = LABELS[1 - LABELS.index(fit.gold[i])]
        fit.run()
        runs[name] = fit.units[("distilled-head", 0)]
    plain, test_flipped = runs["plain"], runs["test-flipped"]
    for key in ("inner", "students", "teacher", "probabilities"):
        assert plain[key] == test_flipped[key], key  # fold 0's test labels changed nothing
    # The same comparison can fail: labels in the training part do reach the choices.
    assert runs["train-flipped"]["students"] != plain["students"]


def test_distilled_head_units_resume_and_other_unlabelled_inputs_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples, unlabelled = _texts(32, 0, True, "l"), _texts(24, 1, True, "u")
    first = _fit(tmp_path, examples, unlabelled)
    first.run()
    again = _fit(tmp_path, examples, unlabelled)
    assert again.resume() == 12  # 3 candidates x 4 folds

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished unit ran again")

    monkeypatch.setattr(distilled, "student", refuse)
    assert again.run() == [] and again.units == first.units
    other = _fit(tmp_path, examples, unlabelled[:-1])
    with pytest.raises(ConfigurationError, match="other data or settings"):
        other.resume()


def _write(path: Path, examples: list[Example], labelled: bool) -> Path:
    rows = [{"text": e.text, "label": e.label} if labelled else {"text": e.text} for e in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_serves_a_winning_distilled_head_as_a_head(
    embed_gateway: RunningGateway, encoder: FakeState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []

    class Recording(candidates.Evaluator):  # every input the server is asked to score
        async def explained(self, inputs: list[dict[str, Any]]) -> Any:
            sent.extend(i["text"] for i in inputs)
            return await super().explained(inputs)

    monkeypatch.setattr(candidates, "Evaluator", Recording)
    examples, unlabelled = _texts(32, 0, True, "l"), _texts(20, 1, True, "u")
    data = _write(tmp_path / "moods.jsonl", examples, labelled=True)
    extra = _write(tmp_path / "more.jsonl", unlabelled + examples[:3], labelled=False)  # 3 labelled: left out
    out = tmp_path / "fit"
    argv = ["fit", "--data", str(data), "--unlabelled", str(extra), "--candidates", "majority,zero-shot,distilled-head"]
    argv += ["--embedding-model", "embedder", "--out", str(out), "--name", "moods"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--url", embed_gateway.url, "--key", API_KEY, "--admin-key", ADMIN_KEY])
    assert exited.value.code == 0
    manifest = json.loads((out / "fit-manifest.json").read_text())
    decision, served = manifest["decision"], manifest["served"]
    # zero-shot and the distilled head are both right everywhere: the cheaper one, the head, is served.
    assert decision["baseline"] == "distilled-head" and decision["choice"] == "baseline"
    assert served["candidate"] == "distilled-head" and served["unlabelled"] == 20 and served["refit_on"] == 32
    assert served["agreement"] == 1.0 and served["largest_probability_gap"] < 1e-5
    assert served["students"] in distilled.STUDENTS and served["head"]["name"] == "moods"
    # Refit on the server's vectors of every unlabelled input.
    embedded = [r["input"] for r in encoder.requests if "input" in r]
    assert [e.text for e in unlabelled] in embedded
    answer = run_template(embed_gateway, "moods", {"inputs": {"text": "positive great fun"}}).json()
    assert answer["label"] == "positive" and answer["head"]["name"] == "moods"
    # The unlabelled inputs went through the teacher once, whatever the folds: the template cache.
    assert sorted(t for t in sent if t in {e.text for e in unlabelled}) == sorted(e.text for e in unlabelled)


def test_fit_refuses_the_distilled_head_without_unlabelled_inputs(tmp_path: Path) -> None:
    data = _write(tmp_path / "moods.jsonl", _texts(32, 0, True, "l"), labelled=True)
    argv = ["fit", "--data", str(data), "--candidates", "distilled-head", "--url", "http://127.0.0.1:9"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--key", API_KEY, "--admin-key", ADMIN_KEY])
    assert "needs unlabelled inputs: --unlabelled FILE" in str(exited.value.code)
