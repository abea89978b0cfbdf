"""A trained adapter's held-out slice scored the way the server will answer it: the
template's scoring plan, its calibration (its calibration inputs through the trained
model) and its temperature, beside the uncalibrated answer; and the scoring that
labelled data recommends (`templates/calibration.py`).

The training loop's own accuracy is the argmax of the label log-probabilities; a
template with `calibration: true` divides out the bias of its calibration inputs, and
a confident adapter can have a large one. Both figures are reported, so a gap
between training and serving is never silent.
"""

from __future__ import annotations

from typing import Any

from adaptserve.templates.calibration import Scoring, accuracy, choose
from adaptserve.templates.render import calibration_inputs, content_free_inputs
from adaptserve.training.scoring import scan
from adaptserve.training.task import Item, Task

# A served accuracy this far below the training-time accuracy is a warning.
WARN_GAP = 0.05


def served_path(model: Any, task: Task, held: list[Item]) -> dict[str, Any]:
    """→ {accuracy_as_served, accuracy_uncalibrated, calibration, recommended, options}
    for a classify task with a held-out slice; {} otherwise."""
    spec = task.spec
    if spec is None or not task.label_tokens or not held:
        return {}
    _, logprobs = scan(model, task, held)
    gold = [it.label for it in held if it.label is not None]
    biases = {"template": _logprobs(model, task, calibration_inputs(spec))}
    if spec.calibration_inputs:
        biases["content-free"] = _logprobs(model, task, content_free_inputs(spec))
    as_served = Scoring("template" if spec.calibration else None, spec.temperature).apply(logprobs, biases)
    uncalibrated = Scoring(None).apply(logprobs, biases)
    recommended, options = choose(logprobs, gold, biases)
    return {
        "accuracy_as_served": accuracy(as_served, gold),
        "accuracy_uncalibrated": accuracy(uncalibrated, gold),
        "calibration": spec.calibration,
        "recommended": {
            "calibration": recommended.calibration is not None,
            "calibration_inputs": recommended.calibration,
            "temperature": recommended.temperature,
        },
        "options": options,
    }


def _logprobs(model: Any, task: Task, inputs: list[dict[str, Any]]) -> list[list[float]]:
    items = [Item(task.prompt(i), task.label_tokens[0]) for i in inputs]
    return scan(model, task, items)[1]


def warning(served: dict[str, Any], trained_accuracy: float | None) -> str | None:
    """A line for the user when serving loses what training learned."""
    if not served or trained_accuracy is None:
        return None
    gap = trained_accuracy - served["accuracy_as_served"]
    if gap <= WARN_GAP:
        return None
    advice = "set `calibration: false` in the template" if served["calibration"] else "run `adaptserve fit`"
    return (
        f"served as the template is written, held-out accuracy is {served['accuracy_as_served']:.3f}, "
        f"{gap * 100:.0f} points below training's {trained_accuracy:.3f}: {advice} "
        f"(recommended here: {served['recommended']})"
    )
