"""Healing a pruned model: logit distillation from the unpruned model (the teacher:
frozen, float32, no gradients) into the pruned one on unlabelled text. The loss is
KL(teacher ‖ student) between the two softmax(logits / T), times T², over every real
token (padding excluded). Every weight of the student trains.

Resumable: every `save_every` steps, and at the last one, the student's weights, the
optimizer state, the step, the RNG state and the loss curve so far are written to one
file, atomically. Nothing else carries state: the batches are a function of the step
(`data.batch_at`) and the rate is constant, so a run resumed from step k, or given more
steps after it finished, follows the path of one run straight through.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adaptserve.compress.data import batch_at, batches, padded
from adaptserve.durable import fsync_tree
from adaptserve.errors import ConfigurationError
from adaptserve.training.train import progress_bar

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class HealConfig:
    steps: int = 0  # 0: prune only
    batch_size: int = 4  # windows per step: sized for a 2-core CPU (about 1k tokens a step)
    max_length: int = 256  # tokens per window
    # Every weight trains here, from a point right next to the teacher. 1e-4 is the
    # usual rate for healing with a LoRA (ShortGPT, LLM-Pruner); full fine-tuning of
    # a pretrained model usually takes 1e-5 to 5e-5: the top of that range, since the
    # soft targets (a whole distribution per token) make the gradient far less noisy
    # than next-token loss on ~1k-token batches. Constant, with no weight decay (it
    # would pull the weights towards zero, not towards the teacher).
    lr: float = 5e-5
    temperature: float = 1.0
    save_every: int = 50
    seed: int = 0

    def check(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.max_length < 2 or self.save_every < 1:
            raise ConfigurationError("heal steps must be ≥ 0, batch size and save-every ≥ 1, max length ≥ 2")
        if not (self.lr > 0 and self.temperature > 0):
            raise ConfigurationError("the learning rate and the temperature must be positive")

    def recipe(self) -> dict[str, Any]:
        """What a checkpoint's run must share with the run that resumes it: all but the
        step count (a finished run can be given more) and how often it saves."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "save_every")}


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of softmax(logits / T) per real token, averaged, times T²
    (so the gradient's scale does not depend on T: Hinton et al., 2015)."""
    real = mask.bool()
    log_q = F.log_softmax(student[real].float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher[real].float() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum") / real.sum().clamp(min=1)
    return kl * temperature**2


def mean_kd(teacher: Any, student: Any, rows: list[list[int]], pad: int, temperature: float) -> float:
    """The distillation loss over `rows`, per real token (no gradients)."""
    total, tokens = 0.0, 0
    for ids, mask in batches(rows, 4, pad):
        with torch.no_grad():
            loss = kd_loss(_logits(student, ids, mask), _logits(teacher, ids, mask), mask, temperature)
        real = int(mask.sum())
        total, tokens = total + float(loss) * real, tokens + real
    return total / max(1, tokens)


def _logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits


def checkpoint_step(folder: Path) -> int:
    """The step of the checkpoint in `folder`; 0 without one."""
    path = folder / CHECKPOINT
    return int(torch.load(path, weights_only=True, mmap=True)["step"]) if path.is_file() else 0


@dataclass
class Healed:
    steps: int
    resumed_from: int
    curve: list[list[float]]  # [step, loss] after each step, from step 1
    seconds_per_step: float | None  # optimizer steps only, over every run that made them


class Healer:
    """The optimizer and the loop of one healing run; `run(folder)` starts from the
    checkpoint in `folder`, if there is one, and writes its checkpoints there."""

    def __init__(self, teacher: Any, student: Any, windows: list[list[int]], pad: int, config: HealConfig) -> None:
        self.teacher, self.student, self.windows, self.pad, self.config = teacher, student, windows, pad, config
        teacher.eval().requires_grad_(False)
        student.train()
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
        self.step, self.seconds = 0, 0.0
        self.curve: list[list[float]] = []

    def run(self, folder: Path) -> Healed:
        self._restore(folder)
        start, target = self.step, self.config.steps
        if start > target:
            raise ConfigurationError(f"the checkpoint in {folder} is at step {start}, past --heal-steps {target}")
        advance = progress_bar(target - start, None, "heal") if target > start else None
        while advance is not None and self.step < target:
            advance(self.optimize())
            if self.step % self.config.save_every == 0 or self.step == target:
                self._save(folder)
        self.student.eval()
        per_step = self.seconds / self.step if self.step else None
        return Healed(self.step, start, self.curve, per_step)

    def optimize(self) -> float:
        started = time.perf_counter()
        chosen = batch_at(self.step, len(self.windows), self.config.batch_size, self.config.seed)
        ids, mask = padded([self.windows[i] for i in chosen], self.pad)
        with torch.no_grad():
            target = _logits(self.teacher, ids, mask)
        loss = kd_loss(_logits(self.student, ids, mask), target, mask, self.config.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        value = loss.item()
        self.curve.append([self.step, value])
        self.seconds += time.perf_counter() - started
        return value

    def _restore(self, folder: Path) -> None:
        path = folder / CHECKPOINT
        if not path.is_file():
            torch.manual_seed(self.config.seed)
            return
        state = torch.load(path, weights_only=True)
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.step, self.seconds, self.curve = int(state["step"]), float(state["seconds"]), list(state["curve"])
        print(f"adaptserve: resuming healing from step {self.step} ({path})", flush=True)

    def _save(self, folder: Path) -> None:
        """Written beside, flushed to disk, then renamed over the last one: a kill at any
        moment leaves the previous checkpoint or this one, whole."""
        state = {
            "step": self.step,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "seconds": self.seconds,
            "curve": self.curve,
        }
        tmp = folder / f".{CHECKPOINT}.tmp"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / CHECKPOINT)
        fsync_tree(folder)
