"""fit's opt-in `encoder` candidate (`fit/encoder.py`) without weights: the fine-tune and
the in-process scoring replaced by stand-ins that record what they were given. Each fold
trains on its training part less a held-out selection part, chooses on that part only,
and is scored on its test part; where it wins, fit writes the refit encoder, says how to
serve it, and serves the best candidate it can meanwhile."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adaptserve.datasets import Example
from adaptserve.fit import encoder
from adaptserve.fit import head as fit_head
from adaptserve.fit.candidates import zero_shot
from adaptserve.fit.report import _served
from adaptserve.fit.run import CANDIDATES, OFFERED, Fit, FitConfig, default_candidates

LABELS = ["bad", "good"]


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The folders the stand-in fine-tune wrote, with the example indices each learnt;
    the stand-in classifier answers the label its text says."""
    seen: dict[str, list[int]] = {}

    def fine_tuned(fit: Fit, indices: list[int], folder: Path, seed: int) -> dict[str, Any]:
        seen[folder.name] = list(indices)
        return {"steps": 150, "examples": len(indices)}

    def predict(folder: Path, texts: list[str]) -> tuple[list[list[float]], float]:
        assert folder.name in seen, "scored a folder no fine-tune wrote"
        return [[0.9, 0.1] if t.startswith("bad") else [0.1, 0.9] for t in texts], 0.01

    monkeypatch.setattr(encoder, "fine_tuned", fine_tuned)
    monkeypatch.setattr(encoder, "predict", predict)
    return seen


def _examples(n: int = 32) -> list[Example]:
    return [Example(f"{LABELS[i % 2]} item {i}", LABELS[i % 2]) for i in range(n)]


def test_the_encoder_is_opt_in() -> None:
    assert "encoder" not in CANDIDATES and "encoder" in OFFERED  # minutes per fold: only when named
    assert default_candidates(unlabelled=False) == CANDIDATES
    assert default_candidates(unlabelled=True) == (*CANDIDATES, "distilled-head")  # not the encoder


def test_the_encoder_trains_and_chooses_inside_each_folds_training_part(
    tmp_path: Path, trained: dict[str, list[int]]
) -> None:
    config = FitConfig(tmp_path, zero_shot(LABELS), "text", candidates=("majority", "encoder"))
    fit = Fit(_examples(), config, server=None)  # type: ignore[arg-type]
    assert fit.run() == []
    for fold in range(4):
        unit = fit.units[("encoder", fold)]
        train, test = set(fit.folds.train(fold)), set(fit.folds.test(fold))
        learnt, chosen_on = set(trained[f"encoder-f{fold}"]), set(unit["selection"])
        assert learnt | chosen_on == train and not learnt & chosen_on  # held out of its training
        assert unit["inner"]["indices"] == unit["selection"] and unit["inner"]["n"] == len(chosen_on) > 0
        assert unit["test"] == fit.folds.test(fold) and not test & (learnt | chosen_on)
        assert unit["kind"] == "baseline" and unit["inner"]["accuracy"] == 1.0 and unit["trained_on"] == len(learnt)
    # Resumed, nothing trains again.
    trained.clear()
    again = Fit(_examples(), config, server=None)  # type: ignore[arg-type]
    assert again.resume() == 8 and again.run() == [] and trained == {}


def test_a_winning_encoder_is_written_and_explained_and_the_best_servable_is_served(
    tmp_path: Path, trained: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptserve.cli.fit import _serve

    config = FitConfig(tmp_path, zero_shot(LABELS), "text", candidates=("majority", "minilm", "encoder"))
    fit = Fit(_examples(), config, server=None)  # type: ignore[arg-type]
    fit.units = {  # minilm a little behind the encoder inside the training parts, majority far behind
        ("minilm", f): {"inner": {"accuracy": 0.8}, "inputs_per_s": 1e4} for f in range(4)
    } | {("majority", f): {"inner": {"accuracy": 0.5}, "inputs_per_s": 1e6} for f in range(4)}
    served: list[str] = []

    def serve_head(fit: Any, name: str, model: str, candidate: str) -> dict[str, Any]:
        served.append(candidate)
        return {"candidate": candidate}

    monkeypatch.setattr(fit_head, "serve_head", serve_head)
    decision = SimpleNamespace(choice="baseline", baseline="encoder", llm=None, verdict="")
    out = _serve(fit, decision, "moods", SimpleNamespace(serve_llm=False, embedding_model="minilm"))
    assert served == ["minilm"] and out["served"] == {"candidate": "minilm"}
    won = out["encoder"]
    assert sorted(trained["encoder"]) == list(range(32)) and won["refit_on"] == 32  # every example
    assert won["models_entry"] == {"name": "moods-encoder", "role": "classify", "path": str(tmp_path / "encoder")}
    assert won["template"]["encoder"] == "moods-encoder" and "instruction" not in won["template"]
    text = _served({"encoder": won, "not_served": "x"})
    assert "The encoder is fit's choice" in text and '"role": "classify"' in text and "Meanwhile: Not served" in text
