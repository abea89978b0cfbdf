"""A trained adapter's held-out slice scored the way the server will answer it, and
the served template's scoring chosen on it as `fit` chooses (`choose` in
`templates/calibration.py`): no calibration, calibration on the content-free inputs,
on the template's own calibration inputs, or on label-balanced real inputs of the
slice, each with its fitted temperature. `served_template` writes the choice into
the template document `train --push` applies.

The training loop's own accuracy is the argmax of the label log-probabilities; a
confident adapter can carry a large bias on content-free inputs, and dividing it out
can cost more than it gains. So the template's `calibration:` flag is not taken as
given where labelled data is at hand: what the template as written would serve is
reported beside every option and the choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adaptserve.datasets import balanced_sample
from adaptserve.templates.calibration import Scoring, accuracy, choose, with_scoring
from adaptserve.templates.render import content_free_inputs
from adaptserve.templates.spec import TemplateSpec
from adaptserve.training.scoring import scan
from adaptserve.training.task import Item, Task

# A served accuracy this far below the training-time accuracy is a warning.
WARN_GAP = 0.05
REAL_INPUTS = 16  # real calibration inputs, label-balanced (as `fit` takes them)


def served_path(model: Any, task: Task, held: list[Item], seed: int = 0) -> dict[str, Any]:
    """→ `choice`'s record, with the real calibration inputs and the slice's size, for a
    classify task with a held-out slice; {} otherwise."""
    spec = task.spec
    if spec is None or not task.label_tokens or not held:
        return {}
    _, logprobs = scan(model, task, held)
    gold = [it.label for it in held if it.label is not None]
    real = real_inputs(spec, held, seed)
    biases = {"content-free": _logprobs(model, task, content_free_inputs(spec))}
    if spec.calibration_inputs:
        biases["template"] = _logprobs(model, task, spec.calibration_inputs)
    if real:
        biases["training"] = _logprobs(model, task, real)
    return choice(logprobs, gold, biases, spec) | {"calibration_inputs": real, "held_out": len(gold)}


def real_inputs(spec: TemplateSpec, held: list[Item], seed: int) -> list[dict[str, Any]]:
    """Label-balanced inputs of the held-out slice (never trained on), at most
    `REAL_INPUTS`; strings cut to their input's `max_length`, as the template allows."""
    usable = [i for i, it in enumerate(held) if it.inputs is not None and it.label is not None]
    labels = [str(it.label) for it in held]
    picked = balanced_sample(usable, labels, max(1, REAL_INPUTS // len(spec.labels)), seed)
    return [_cut(spec, held[i].inputs or {}) for i in picked][:64]


def _cut(spec: TemplateSpec, inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v[: spec.inputs[k].max_length] if isinstance(v, str) else v for k, v in inputs.items()}


def choice(
    logprobs: Sequence[Sequence[float]],
    gold: Sequence[int],
    biases: Mapping[str, Sequence[Sequence[float]]],
    spec: TemplateSpec,
) -> dict[str, Any]:
    """The scoring `fit` would choose on these labelled rows (`biases`: calibration
    inputs' log-probabilities by name), each option's accuracy and log-loss, and what
    the template as written (its `calibration` and `temperature`) would serve."""
    chosen, options = choose(logprobs, gold, biases)
    written = None if not spec.calibrates else ("template" if spec.calibration_inputs else "content-free")
    as_written = Scoring(written, spec.temperature).apply(logprobs, biases)
    return {
        "template_calibration": spec.calibration,
        "chosen": {
            "calibration": chosen.calibration,
            "temperature": chosen.temperature,
            "accuracy": options[chosen.calibration or "none"]["accuracy"],
        },
        "options": options,
        "as_written": {"calibration": written, "temperature": spec.temperature, "accuracy": accuracy(as_written, gold)},
    }


def served_template(spec: TemplateSpec, served: dict[str, Any], model: str) -> dict[str, Any]:
    """The template document `train --push` applies: the training template on `model`
    (the pushed adapter's alias) with the chosen calibration and temperature."""
    chosen = served["chosen"]
    inputs = (spec.calibration_inputs or []) if chosen["calibration"] == "template" else served["calibration_inputs"]
    doc = spec.document() | {"model": model}
    doc.pop("tenant", None)  # the push says whose it is
    return with_scoring(doc, chosen["calibration"], [_cut(spec, i) for i in inputs], chosen["temperature"])


def table(served: dict[str, Any]) -> str:
    """Option → held-out accuracy (and log-loss, temperature), the chosen one marked."""
    chosen = served["chosen"]["calibration"] or "none"
    written = served["as_written"]["calibration"] or "none"
    lines = [f"served-path scoring chosen on the held-out slice ({served['held_out']} examples):"]
    for name, seen in served["options"].items():
        marks = [m for m, on in (("chosen", name == chosen), ("the template's", name == written)) if on]
        lines.append(
            f"  calibration {name:<13} T={seen['temperature']:<7g} accuracy {seen['accuracy']:.3f}  "
            f"log-loss {seen['log_loss']:.3f}" + (f"  <- {', '.join(marks)}" if marks else "")
        )
    as_written = served["as_written"]
    lines.append(
        f"  as the template is written (calibration: {str(served['template_calibration']).lower()}, "
        f"T={as_written['temperature']:g}): accuracy {as_written['accuracy']:.3f}"
    )
    return "\n".join(lines)


def _logprobs(model: Any, task: Task, inputs: list[dict[str, Any]]) -> list[list[float]]:
    items = [Item(task.prompt(i), task.label_tokens[0]) for i in inputs]
    return scan(model, task, items)[1]


def warning(served: dict[str, Any], trained_accuracy: float | None, applied: bool) -> str | None:
    """A line for the user when serving loses what training learned: the template as
    written, where the choice is not applied (no `--push --alias`), or else the choice."""
    if not served or trained_accuracy is None:
        return None
    chosen, written = served["chosen"], served["as_written"]
    if not applied and chosen["accuracy"] - written["accuracy"] > WARN_GAP:
        scoring = f"calibration: {chosen['calibration'] or 'none'}, temperature {chosen['temperature']:g}"
        return (
            f"served as the template is written, held-out accuracy is {written['accuracy']:.3f}; with the "
            f"chosen scoring ({scoring}) {chosen['accuracy']:.3f}: push with --alias to apply it, or write "
            "it into the template"
        )
    gap = trained_accuracy - chosen["accuracy"]
    if gap <= WARN_GAP:
        return None
    return (
        f"served with the chosen scoring, held-out accuracy is {chosen['accuracy']:.3f}, "
        f"{gap * 100:.0f} points below training's {trained_accuracy:.3f}: run `adaptserve fit` to compare "
        "with prompts and baselines"
    )
