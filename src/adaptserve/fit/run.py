"""One `fit` run: every candidate on the same folds, within a time budget, each
finished (candidate, fold) appended to `OUT/units.jsonl` so a re-run resumes; then
the table, fit's nested picks (`nested.py`), and the LLM candidate served, refit on
every example.

Order: the baselines (tuned inside each fold's training part), the zero-/few-shot
templates and, given unlabelled inputs, the distilled head (`distilled.py`) on every
fold (seconds to a minute), then LoRA on fold 0 and on further
folds while the budget lasts (keeping back the refit's time). Every candidate's
calibration and temperature are chosen on labelled inputs outside its test fold
(`templates/calibration.py`), and its inner score is measured there, so the test
folds only measure.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptserve.datasets import Example, balanced_sample
from adaptserve.errors import ConfigurationError
from adaptserve.fit import baselines, distilled, encoder
from adaptserve.fit.candidates import FIT_PREFIX, Server, content_free, throughput
from adaptserve.fit.folds import Folds
from adaptserve.templates.calibration import Scoring, argmax, choose, with_scoring

LLM = ("zero-shot", "few-shot")
# name → (rank, optimizer steps, learning rate): a small search, tried in order while the budget lasts.
LORA = {"lora-r8": (8, 48, 1e-3), "lora-r16": (16, 96, 5e-4)}
CANDIDATES = (*baselines.BASELINES, *LLM, *LORA)
OFFERED = (distilled.NAME, encoder.NAME)  # only when asked for, or (distilled-head) given unlabelled inputs


def default_candidates(unlabelled: bool) -> tuple[str, ...]:
    """What fit tries when not told: every candidate but the offered ones, and the
    distilled head when unlabelled inputs are given (the encoder only when named)."""
    return CANDIDATES + ((distilled.NAME,) if unlabelled else ())


UNITS = {distilled.NAME: distilled.unit, encoder.NAME: encoder.unit}  # candidates with a module of their own
CHEAP = (*baselines.BASELINES, *UNITS)  # the verdict's cheap side: no LLM call
STEP_S_GUESS = 3.0  # seconds per LoRA step before one is measured (2 CPU cores, batch 8)
LORA_OVERHEAD_S = 45.0  # loading the model, pushing the adapter, the engine loading it
SERVE_S = 30.0  # serving the winner and checking it
MIN_LORA_S = 60.0  # of training: the least a LoRA run is given, whatever the budget says
ALL = -1  # not a fold: the served candidate's refit on every example
UNIT_FORMAT = 3  # 2: tuned baselines, every unit's inner score (`nested.py`); 3: near-duplicates in one fold


@dataclass(frozen=True)
class FitConfig:
    out: Path
    document: dict[str, Any]  # the starting template (calibration off, no examples)
    field: str  # the template input the text goes to
    budget_s: float = 600.0
    candidates: tuple[str, ...] = CANDIDATES
    folds: int | None = None
    seed: int = 0
    base_model: Path | None = None  # for LoRA
    lora_steps: int | None = None  # instead of each LoRA configuration's own
    source: str = "data"  # where the examples came from, for the report
    unlabelled: tuple[str, ...] = ()  # texts without labels, for the distilled-head candidate


class Fit:
    def __init__(self, examples: list[Example], config: FitConfig, server: Server) -> None:
        self.examples, self.config, self.server = examples, config, server
        self.labels = [label["name"] for label in config.document["labels"]]
        unknown = sorted({e.label for e in examples} - set(self.labels))
        if unknown:
            raise ConfigurationError(f"labels {unknown} are not labels of the template ({self.labels})")
        self.gold = [e.label for e in examples]
        self.folds = Folds.stratified(self.gold, config.folds, config.seed, texts=[e.text for e in examples])
        self.notes = self.folds.thin(self.gold)
        self.digest = _identity(examples, config)
        self.units: dict[tuple[str, int], dict[str, Any]] = {}
        self.resumed: list[dict[str, Any]] = []  # units an earlier run finished
        self.step_s = STEP_S_GUESS
        self.started = time.perf_counter()
        self._task: Any = None
        self.vectors = distilled.Vectors()

    # -- state -------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.config.out / "units.jsonl"

    def resume(self) -> int:
        """Load the finished units of an earlier run on the same data; → how many."""
        self.config.out.mkdir(parents=True, exist_ok=True)
        if not self.state_file.is_file():
            return 0
        for line in self.state_file.read_text().splitlines():
            try:
                unit = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of an interrupted run: that unit runs again
            if unit["data"] != self.digest:
                raise ConfigurationError(
                    f"{self.config.out} holds a fit of other data or settings (template, folds, seed, "
                    "LoRA steps): choose another --out"
                )
            self.units[(unit["candidate"], unit["fold"])] = unit
        self.resumed = list(self.units.values())
        return len(self.units)

    def _record(self, unit: dict[str, Any]) -> None:
        unit["data"] = self.digest
        self.units[(unit["candidate"], unit["fold"])] = unit
        with self.state_file.open("a") as f:
            f.write(json.dumps(unit) + "\n")

    # -- the plan ----------------------------------------------------------------------

    def plan(self) -> list[tuple[str, int]]:
        chosen = self.config.candidates
        cheap = [c for c in chosen if c not in LORA]
        out = [(c, f) for c in cheap for f in range(len(self.folds))]
        return out + [(c, f) for f in range(len(self.folds)) for c in chosen if c in LORA]

    def run(self, progress: Callable[[str], None] | None = None) -> list[str]:
        """Every planned unit not done yet; → notes on what was skipped and why."""
        notes = list(self.notes)
        failed: set[str] = set()
        for candidate, fold in self.plan():
            if (candidate, fold) in self.units or candidate in failed:
                continue
            if candidate in LORA and not self._affordable(candidate, fold):
                notes.append(f"{candidate} fold {fold}: skipped, the budget would run out")
                continue
            if candidate in CHEAP and not baselines.available("minilm" if candidate in UNITS else candidate):
                notes.append(f"{candidate}: skipped, not installed (pip install adaptserve[adapt])")
                continue
            if progress is not None:
                progress(f"{candidate} fold {fold}")
            try:
                self._record(self._unit(candidate, fold))
            except ConfigurationError as exc:  # e.g. few-shot prompts longer than the model's context
                failed.add(candidate)
                notes.append(f"{candidate} fold {fold}: failed, left out: {exc}")
        return notes

    def _affordable(self, candidate: str, fold: int) -> bool:
        if self.config.base_model is None:
            return False
        steps = self._steps(candidate)
        first = fold == 0 and not any(c in LORA for c, _ in self.units)
        refit = steps * self.step_s + LORA_OVERHEAD_S  # the served adapter, trained again on every example
        return first or self.spent() + steps * self.step_s + LORA_OVERHEAD_S + refit + SERVE_S <= self.config.budget_s

    def spent(self) -> float:
        """Seconds of the budget used: this run's, and the units an earlier run finished."""
        return time.perf_counter() - self.started + sum(u["seconds"] for u in self.resumed)

    def _unit(self, candidate: str, fold: int) -> dict[str, Any]:
        started = time.perf_counter()
        if candidate in UNITS:
            unit = UNITS[candidate](self, fold)
        else:
            unit = self._baseline(candidate, fold) if candidate in CHEAP else self._llm(candidate, fold)
        return unit | {"candidate": candidate, "fold": fold, "seconds": time.perf_counter() - started}

    # -- candidates ----------------------------------------------------------------------

    def _baseline(self, name: str, fold: int) -> dict[str, Any]:
        """Tuned on the fold's training part (inner folds there), scored on its test part."""
        train, test = self.folds.train(fold), self.folds.test(fold)
        texts = [e.text for e in self.examples]
        fitted = baselines.run(
            name,
            [texts[i] for i in train],
            [self.gold[i] for i in train],
            [texts[i] for i in test],
            self.labels,
            seed=self._seed(fold),
        )
        speed = len(test) / fitted.predict_s if fitted.predict_s else math.nan
        inner = {"accuracy": fitted.inner_accuracy, "n": len(train), "indices": train, "chosen": fitted.chosen}
        return {
            "kind": "baseline",
            "test": test,
            "probabilities": fitted.probabilities,
            "inputs_per_s": speed,
            "inner": inner,
        }

    def teacher_unit(self, fold: int) -> dict[str, Any]:
        """The zero-shot candidate's unit on `fold` (a distilled head's teacher): recorded
        where it ran, else run (and recorded, but for the refit: `ALL` is not a fold)."""
        if (distilled.TEACHER, fold) not in self.units:
            unit = self._unit(distilled.TEACHER, fold)
            if fold == ALL:
                return unit
            self._record(unit)
        return self.units[(distilled.TEACHER, fold)]

    def _split(self, fold: int) -> tuple[list[int], list[int]]:
        """A fold's training and test indices; for the refit (`ALL`), every example and,
        to check the served path against, fold 0's test inputs (trained on: no score)."""
        if fold == ALL:
            return list(range(len(self.examples))), self.folds.test(0)
        return self.folds.train(fold), self.folds.test(fold)

    def _llm(self, candidate: str, fold: int) -> dict[str, Any]:
        train, test = self._split(fold)
        doc, selection, extra = self._document(candidate, fold, train)
        # Label-balanced inputs whose bias "training" calibration divides out: from the
        # selection inputs (never what an adapter trained on, but for the refit adapter,
        # which trained on all), at most 64 (a template's limit).
        pool = selection or train
        calibration = balanced_sample(pool, self.gold, max(1, 16 // len(self.labels)), self._seed(fold))[:64]
        scored = self.server.score(doc, self.inputs(test))
        biases = {
            "content-free": self.server.score(doc, content_free(doc)).rows,
            "training": self.server.score(doc, self.inputs(calibration)).rows,
        }
        if selection:
            chosen_on = self.server.score(doc, self.inputs(selection))
            scoring, options = choose(chosen_on.rows, [self._index(i) for i in selection], biases)
        else:  # the refit adapter: no example left to choose on; its folds' choice
            scoring, options = self._inherited(candidate), {}
        inner = options.get(scoring.calibration or "none", {}).get("accuracy", math.nan)
        return extra | {
            "kind": "llm",
            "test": test,
            "selection": selection,
            "calibration_inputs": calibration,
            "logprobs": scored.rows,
            "probabilities": scoring.apply(scored.rows, biases),
            "scoring": {"calibration": scoring.calibration, "temperature": scoring.temperature},
            "options": options,
            "inner": {"accuracy": inner, "n": len(selection), "indices": selection},
            "document": with_scoring(doc, scoring.calibration, self.inputs(calibration), scoring.temperature),
            **throughput(scored),
        }

    def _document(self, candidate: str, fold: int, train: list[int]) -> tuple[dict, list[int], dict]:
        """→ the candidate's template, the labelled inputs its scoring is chosen on,
        and facts for the record."""
        doc = self.config.document
        if candidate == "zero-shot":  # all of the training part on small data (scored anyway: k-fold)
            return doc, balanced_sample(train, self.gold, max(64, 512 // len(self.labels)), self._seed(fold)), {}
        if candidate == "few-shot":
            shots = self._shots(train, fold)
            shown = zip(shots, self.inputs(shots), strict=True)
            examples = [{"inputs": inputs, "label": self.gold[i]} for i, inputs in shown]
            rest = [i for i in train if i not in set(shots)]
            return (
                doc | {"examples": examples},
                balanced_sample(rest, self.gold, max(2, 32 // len(self.labels)), self._seed(fold)),
                {},
            )
        # LoRA: at most a quarter of each label's training examples held out to choose on;
        # the refit trains on every example, its scoring chosen by its folds (`_inherited`).
        selection = balanced_sample(train, self.gold, max(4, 16 // len(self.labels)), self._seed(fold), share=0.25)
        selection = [] if fold == ALL else selection
        fit_on = [i for i in train if i not in set(selection)]
        adapter, facts = self._train_lora(candidate, fold, fit_on)
        return doc | {"model": adapter}, selection, facts

    def _inherited(self, candidate: str) -> Scoring:
        """The scoring the candidate's folds chose most often (ties: no calibration
        first), at the median of those folds' temperatures."""
        chosen = [u["scoring"] for (c, f), u in sorted(self.units.items()) if c == candidate and f != ALL]
        if not chosen:
            return Scoring(None)
        counts = Counter(s["calibration"] or "" for s in chosen)
        calibration = max(sorted(counts), key=lambda k: counts[k])
        temperatures = sorted(s["temperature"] for s in chosen if (s["calibration"] or "") == calibration)
        return Scoring(calibration or None, temperatures[len(temperatures) // 2])

    def _shots(self, train: list[int], fold: int) -> list[int]:
        """Label-balanced examples, short ones preferred (prompts stay small)."""
        short = [i for i in train if len(self.examples[i].text) <= 400]
        pool = short if len({self.gold[i] for i in short}) == len(self.labels) else train
        return balanced_sample(pool, self.gold, max(1, 8 // len(self.labels)), self._seed(fold))

    def _train_lora(self, candidate: str, fold: int, fit_on: list[int]) -> tuple[str, dict[str, Any]]:
        from adaptserve.templates.spec import TemplateSpec
        from adaptserve.training.task import Task
        from adaptserve.training.train import TrainConfig, train

        if self.config.base_model is None:
            raise ConfigurationError("LoRA candidates need the base model (--model)")
        if self._task is None:
            self._task = Task.load(self.config.base_model, TemplateSpec.model_validate(self.config.document))
        rank, _, lr = LORA[candidate]
        steps = self._steps(candidate)
        items = [self._task.classify_item(x, self._index(i)) for i, x in zip(fit_on, self.inputs(fit_on), strict=True)]
        epochs = max(1, math.ceil(steps * 8 / len(items)))
        # A fold's run ends where half of what is left of the budget would (the other half
        # kept for the refit); later runs, the refit too, run as many steps as a cut run
        # managed, each with its learning-rate schedule over those steps (the cut run's
        # spanned the steps it planned: near, not the same training).
        left = (self.config.budget_s - self.spent() - 2 * LORA_OVERHEAD_S - SERVE_S) / 2
        config = TrainConfig(
            rank=rank,
            learning_rate=lr,
            epochs=epochs,
            max_steps=steps,
            max_seconds=None if fold == ALL else max(MIN_LORA_S, left),
            holdout=0,
            seed=self._seed(fold),
        )
        folder = self.config.out / "adapters" / f"{candidate}-{_tag(fold)}"
        _, outcome = train(self._task, items, self.config.base_model, folder, config)
        self.step_s = outcome.seconds_per_step
        name = f"{FIT_PREFIX}{self.digest[:8]}-{candidate}-{_tag(fold)}"
        self.server.push(folder, name)
        facts = {"steps": outcome.steps, "train_seconds": outcome.seconds, "seconds_per_step": outcome.seconds_per_step}
        facts["out_of_time"] = outcome.out_of_time
        return name, {"adapter": name, "training": facts, "trained_on": len(items)}

    def _steps(self, candidate: str) -> int:
        """The candidate's optimizer steps: its configuration's (or --lora-steps), or as
        many as a run cut short by the budget managed, for every later run of it."""
        cut = [u["training"]["steps"] for (c, _), u in self.units.items() if c == candidate and _cut(u)]
        return min(cut) if cut else self.config.lora_steps or LORA[candidate][1]

    def _seed(self, fold: int) -> int:
        return self.config.seed * 1000 + fold

    def inputs(self, indices: list[int]) -> list[dict[str, Any]]:
        return self.as_inputs([self.examples[i].text for i in indices])

    def as_inputs(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Texts as template inputs; those longer than the input allows are cut."""
        limit = self.config.document["inputs"][self.config.field].get("max_length", 4000)
        return [{self.config.field: text[:limit]} for text in texts]

    def _index(self, i: int) -> int:
        return self.labels.index(self.gold[i])

    # -- serving -----------------------------------------------------------------------

    def serve(self, candidate: str, name: str) -> dict[str, Any]:
        """The candidate refit on every example (an adapter trained on all of them, its
        scoring chosen by its folds; few-shot examples and scoring chosen from all of
        them) becomes the tenant's template `name` (a new version, active); then fold 0's
        inputs go through it as any caller's would, and its answers are compared with
        what fit measured for the refit (the same labels, the same probabilities). No
        accuracy: the refit saw those inputs; the nested figures are its estimate."""
        unit = self._unit(candidate, ALL)
        doc = dict(unit["document"])
        if "adapter" in unit:
            doc["model"] = f"{name}-lora"
            self.server.alias(doc["model"], unit["adapter"])
        self.server.apply(doc, name)
        checked = self.check_served(name, unit["test"], unit["probabilities"])
        self.drop_adapters(keep=unit.get("adapter"))
        return {
            "template": name,
            "tenant": self.server.tenant,
            "candidate": candidate,
            "model": doc.get("model", "default"),
            "refit_on": len(self.examples),
            "trained_on": unit.get("trained_on"),
            "chosen_on": len(unit["selection"]),
            "scoring": unit["scoring"],
            **checked,
        }

    def check_served(self, name: str, indices: list[int], probabilities: list[list[float]]) -> dict[str, Any]:
        """Template `name`'s answers for the examples at `indices`, as any caller gets
        them, against what fit measured for them (`probabilities`, in `labels` order):
        the share with the same label, and the largest and median probability gap."""
        answers = self.server.verify(name, self.inputs(indices))
        pairs = list(zip(answers, probabilities, strict=True))
        gaps = [max(abs(a[label] - p[j]) for j, label in enumerate(self.labels)) for a, p in pairs]
        same = [max(a, key=a.__getitem__) == self.labels[argmax(p)] for a, p in pairs]
        return {
            "checked_inputs": len(answers),
            "agreement": sum(same) / len(answers),
            "largest_probability_gap": max(gaps),
            "median_probability_gap": statistics.median(gaps),
        }

    def drop_adapters(self, keep: str | None = None) -> None:
        """The LoRA candidates' adapters off the server (and their aliases), but `keep`."""
        losers = sorted({u["adapter"] for u in self.units.values() if "adapter" in u})
        self.server.drop_adapters([a for a in losers if a != keep])


def _cut(unit: dict[str, Any]) -> bool:
    return bool(unit.get("training", {}).get("out_of_time"))


def _tag(fold: int) -> str:
    return "all" if fold == ALL else f"f{fold}"


def _identity(examples: list[Example], config: FitConfig) -> str:
    """What a finished unit depends on: the data, the run's settings and the units' format."""
    facts = [[[e.text, e.label] for e in examples], config.document, config.field, config.folds, config.seed]
    facts += [config.lora_steps, UNIT_FORMAT]
    if config.unlabelled:  # only then: earlier runs' digests stay valid
        facts.append(hashlib.sha256(json.dumps(config.unlabelled).encode()).hexdigest())
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
