"""`adaptserve compress prune`: one pruning run, start to finish. Score the layers on
calibration text, write the model without the least important ones, measure held-out
perplexity, heal by distillation if asked, write `manifest.json`, then rename the
folder into place: the output appears whole or not at all.

The run works in `.<out>.partial` beside the output. A healing run writes its plan
(the scores, what was dropped, the settings that must match) and its checkpoints to
`.heal/` there; cut short, it leaves that folder, and the same command resumes from
its last checkpoint. `.heal/` moves into the output with the rest, so a finished run
can be given more `--heal-steps` later; a different setting is refused, never mixed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptserve.compress import data, scoring, surgery
from adaptserve.compress.heal import HealConfig, Healed, Healer, checkpoint_step, mean_kd
from adaptserve.default_model import folder_digest
from adaptserve.durable import fsync_tree
from adaptserve.errors import ConfigurationError
from adaptserve.quantize.env import folder_size
from adaptserve.training.manifest import library_versions

HEAL_DIR = ".heal"
PLAN = "plan.json"
MANIFEST = "manifest.json"
SCORE_BATCH = 8  # texts per forward pass when scoring and measuring perplexity
CURVE_POINTS = 100  # healing-curve points kept in the manifest
PROBE_WINDOWS = 4  # healing windows the KD loss is reported on, before and after


@dataclass(frozen=True)
class Job:
    model_dir: Path
    out: Path
    drop: int
    calibration: str = "rotten-tomatoes"  # a bundled dataset (its training split) or a file
    samples: int = 256  # calibration texts the layers are scored on
    heal: HealConfig = field(default_factory=HealConfig)
    threads: int | None = None  # torch threads (default: every CPU)
    held_out: int = 32  # test-split texts perplexity is measured on

    @property
    def staging(self) -> Path:
        return self.out.parent / f".{self.out.name}.partial"


def drop_count(layers: int, drop: int | None, target_layers: int | None) -> int:
    """The layers to drop, from `--drop N` or `--target-layers K`."""
    count = drop if drop is not None else layers - (target_layers if target_layers is not None else layers)
    if not 1 <= count < layers:
        raise ConfigurationError(f"the model has {layers} layers: drop 1 to {layers - 1} of them (asked {count})")
    return count


@dataclass
class Inputs:
    """The run's token rows, made once: calibration texts (scoring), healing windows,
    held-out texts (perplexity)."""

    calibration: list[list[int]]
    windows: list[list[int]]
    held: list[list[int]]
    held_from: str  # the dataset whose test split `held` comes from
    pad: int

    @classmethod
    def make(cls, job: Job, tokenizer: Any, texts: list[str]) -> Inputs:
        length = job.heal.max_length
        dataset, held = data.held_out(job.calibration, job.held_out)
        return cls(
            calibration=data.rows(tokenizer, texts[: job.samples], length),
            windows=data.windows(tokenizer, texts, length) if job.heal.steps else [],
            held=data.rows(tokenizer, held, length),
            held_from=dataset,
            pad=data.pad_id(tokenizer),
        )

    @property
    def probe(self) -> list[list[int]]:
        """Where the KD loss is reported before and after healing: the first windows."""
        return self.windows[:PROBE_WINDOWS]


def run(job: Job) -> tuple[Path, dict[str, Any]]:
    """Prune (and heal) `job.model_dir` into `job.out`; → (the folder, its manifest)."""
    started = time.perf_counter()
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    job.heal.check()
    if job.samples < 1:
        raise ConfigurationError("--samples must be at least 1")
    drop_count(surgery.layer_count(job.model_dir), job.drop, None)
    texts = data.texts(job.calibration)  # scoring reads the first `samples`, healing all
    recipe = _recipe(job, texts)
    if _finished(job, recipe):
        print(f"adaptserve: {job.out} is already healed to step {job.heal.steps}: nothing to do", flush=True)
        return job.out, json.loads((job.out / MANIFEST).read_text())
    plan = _prepare(job, recipe)
    try:
        teacher, tokenizer = scoring.load_model(job.model_dir), scoring.load_tokenizer(job.model_dir)
        inputs = Inputs.make(job, tokenizer, texts)
        if plan is None:
            plan = _score_and_drop(job, recipe, teacher, inputs)
        student = scoring.load_model(job.staging)
        healed = _heal(job, plan, teacher, student, inputs) if job.heal.steps else None
        manifest = _manifest(job, plan, healed, time.perf_counter() - started)
        (job.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_tree(job.staging)
        _publish(job.staging, job.out)
    except BaseException:
        if (job.staging / HEAL_DIR / PLAN).is_file():
            print(f"adaptserve: stopped; {job.staging} keeps the run: the same command resumes it", flush=True)
        else:
            shutil.rmtree(job.staging, ignore_errors=True)
        raise
    return job.out, manifest


def _recipe(job: Job, texts: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the run it resumes."""
    return {
        "source_sha256": folder_digest(job.model_dir),
        "drop": job.drop,
        "calibration": job.calibration,
        "text_sha256": data.digest(texts),  # the whole training split or file
        "samples": job.samples,
        **job.heal.recipe(),
    }


def _read_plan(folder: Path) -> dict[str, Any] | None:
    path = folder / HEAL_DIR / PLAN
    return json.loads(path.read_text()) if path.is_file() else None


def _same_recipe(plan: dict[str, Any], recipe: dict[str, Any], where: Path) -> None:
    changed = [
        f"{k}: {plan['recipe'].get(k)!r} then, {v!r} now" for k, v in recipe.items() if plan["recipe"].get(k) != v
    ]
    if changed:
        raise ConfigurationError(
            f"{where} holds a healing run made with other settings ({'; '.join(changed)}): "
            "rerun with the same arguments to resume it, or remove it or choose another --out"
        )


def _finished(job: Job, recipe: dict[str, Any]) -> bool:
    """Whether `job.out` is this run, already done (a re-run is then a no-op)."""
    plan = None if job.staging.exists() or not job.heal.steps else _read_plan(job.out)
    if plan is None or not (job.out / MANIFEST).is_file():
        return False
    _same_recipe(plan, recipe, job.out)
    done = checkpoint_step(job.out / HEAL_DIR)
    if done > job.heal.steps:
        raise ConfigurationError(f"{job.out} is healed to step {done} already, past --heal-steps {job.heal.steps}")
    return done == job.heal.steps


def _prepare(job: Job, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The staging folder, ready; → the plan of the run it resumes (None: a fresh one)."""
    plan = _read_plan(job.staging)
    if plan is not None:
        _same_recipe(plan, recipe, job.staging)
        if not job.heal.steps:
            raise ConfigurationError(f"{job.staging} holds a healing run: give --heal-steps to resume it, or remove it")
        if not (job.staging / surgery.CONFIG).is_file():  # stopped while the pruned folder was written
            surgery.write_pruned(job.model_dir, job.staging, plan["dropped"])
        return plan
    if job.staging.exists():  # cut short before it had anything worth resuming
        shutil.rmtree(job.staging)
    if job.out.exists():
        plan = _read_plan(job.out) if job.heal.steps else None
        if plan is None:
            raise ConfigurationError(f"{job.out} exists; remove it or choose another --out")
        _same_recipe(plan, recipe, job.out)  # a finished run, given more steps
        job.staging.mkdir(parents=True)
        surgery.write_pruned(job.model_dir, job.staging, plan["dropped"])  # before the plan moves: see above
        os.replace(job.out / HEAL_DIR, job.staging / HEAL_DIR)
        return plan
    job.staging.mkdir(parents=True)
    return None


def _score_and_drop(job: Job, recipe: dict[str, Any], teacher: Any, inputs: Inputs) -> dict[str, Any]:
    """Score, drop, measure; → the plan (written to `.heal/` when healing follows)."""
    scores = scoring.block_influence(teacher, data.batches(inputs.calibration, SCORE_BATCH, inputs.pad))
    dropped = scoring.lowest(scores, job.drop)
    kept = surgery.write_pruned(job.model_dir, job.staging, dropped)
    print(f"adaptserve: dropping layers {', '.join(map(str, dropped))} of {len(scores)}", flush=True)
    student = scoring.load_model(job.staging)
    plan: dict[str, Any] = {
        "recipe": recipe,
        "scores": scores,
        "dropped": dropped,
        "kept": kept,
        "calibration_texts": len(inputs.calibration),
        "held_out": {"dataset": inputs.held_from, "split": "test", "texts": len(inputs.held)},
        "perplexity": {
            "source": scoring.perplexity(teacher, data.batches(inputs.held, SCORE_BATCH, inputs.pad)),
            "pruned": scoring.perplexity(student, data.batches(inputs.held, SCORE_BATCH, inputs.pad)),
        },
    }
    if job.heal.steps:
        plan["kd_loss_before"] = mean_kd(teacher, student, inputs.probe, inputs.pad, job.heal.temperature)
        (job.staging / HEAL_DIR).mkdir()
        tmp = job.staging / HEAL_DIR / f".{PLAN}.tmp"
        tmp.write_text(json.dumps(plan, indent=2) + "\n")
        os.replace(tmp, job.staging / HEAL_DIR / PLAN)
    return plan


def _heal(job: Job, plan: dict[str, Any], teacher: Any, student: Any, inputs: Inputs) -> Healed:
    healed = Healer(teacher, student, inputs.windows, inputs.pad, job.heal).run(job.staging / HEAL_DIR)
    surgery.save_weights(student.state_dict(), job.staging)
    plan["perplexity"]["healed"] = scoring.perplexity(student, data.batches(inputs.held, SCORE_BATCH, inputs.pad))
    plan["kd_loss_after"] = mean_kd(teacher, student, inputs.probe, inputs.pad, job.heal.temperature)
    plan["heal_windows"] = len(inputs.windows)
    return healed


def _sampled(curve: list[list[float]], points: int = CURVE_POINTS) -> list[list[float]]:
    stride = max(1, math.ceil(len(curve) / points))
    kept = curve[::stride]
    return kept if not curve or kept[-1] == curve[-1] else [*kept, curve[-1]]


def _manifest(job: Job, plan: dict[str, Any], healed: Healed | None, seconds: float) -> dict[str, Any]:
    heal = None
    if healed is not None:
        heal = asdict(job.heal) | {
            "optimizer": "AdamW, constant rate, no weight decay, gradient norm clipped at 1.0",
            "loss": "KL(teacher || student) of softmax(logits / T) x T^2 per real token",
            "text": {"source": job.calibration, "split": "train", "windows": plan["heal_windows"]},
            "resumed_from": healed.resumed_from,
            "seconds_per_step": healed.seconds_per_step,
            "kd_loss": {"before": plan["kd_loss_before"], "after": plan["kd_loss_after"]},
            "curve": _sampled(healed.curve),
        }
    return {
        "source": {
            "path": str(job.model_dir),
            "sha256": plan["recipe"]["source_sha256"],
            "size_bytes": folder_size(job.model_dir),
            "layers": len(plan["scores"]),
        },
        "method": "depth pruning: the layers of lowest block influence (1 - cos of a layer's input and output)",
        "layer_scores": plan["scores"],
        "dropped": plan["dropped"],
        "kept": len(plan["kept"]),
        "kept_layers": plan["kept"],
        "calibration": {
            "source": job.calibration,
            "split": "train",
            "texts": plan["calibration_texts"],
            "max_length": job.heal.max_length,
            "text_sha256": plan["recipe"]["text_sha256"],
        },
        "heal": heal,
        "held_out": plan["held_out"],
        "perplexity": {**plan["perplexity"], "healed": plan["perplexity"].get("healed")},
        "size_bytes": folder_size(job.staging),
        "source_size_bytes": folder_size(job.model_dir),
        "versions": library_versions(),
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _publish(staging: Path, out: Path) -> None:
    """Rename `staging` into place; an older `out` (a run given more steps) is moved
    aside first and removed after."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old)
