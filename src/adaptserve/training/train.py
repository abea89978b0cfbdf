"""Fine-tune an adapter on a handful of examples, on CPU or GPU: LoRA or AdaLoRA, or
LoHa, LoKr, IA3 or DoRA, which are converted to the LoRA vLLM serves (`convert.py`),
or a soft prompt (prompt tuning: trained and evaluated here, not served).

Reads top to bottom: the config (defaults chosen from the data size), the held-out
slice, the model, the loop (warm-up then linear decay, length-grouped batches,
early stopping on the held-out loss), then the adapter folder and its manifest.
The loss is on the target tokens only and the vocabulary projection runs only at
those positions. `Ctrl-C` stops the loop and still writes the best adapter so far.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from adaptserve.training.convert import CONVERTED, convert
from adaptserve.training.convert import peft_config as convert_config
from adaptserve.training.scoring import evaluate, item_loss, target_logprobs
from adaptserve.training.served import served_path
from adaptserve.training.task import Item, Task

log = logging.getLogger(__name__)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["lora", "adalora", "loha", "lokr", "ia3", "dora", "prompt-tuning"] = "lora"
    rank: int | None = None  # LoRA rank; AdaLoRA's average rank after pruning; LoHa's, LoKr's
    convert_rank: int | None = None  # the served LoRA's rank, for converted methods (default: rank)
    virtual_tokens: int = 16  # prompt tuning: the soft prompt's length
    alpha: int | None = None  # default: 2 x rank
    targets: tuple[str, ...] = TARGETS
    learning_rate: float | None = None
    epochs: int | None = None
    batch_size: int = 8
    warmup: float = 0.1  # fraction of the steps
    holdout: float = 0.15  # fraction of the examples kept for early stopping and metrics
    patience: int = 2  # evaluations without a better held-out loss before stopping
    max_steps: int | None = None
    max_seconds: float | None = None  # of optimizer steps: none begins after it (fit's time budget)
    seed: int = 0
    threads: int | None = None

    def resolved(self, n_train: int) -> TrainConfig:
        """Defaults from the data size: about 120 optimizer steps (at least 2 epochs,
        at most 12), rank 8 up to a thousand examples, then 16."""
        rank = self.rank or (8 if n_train <= 1000 else 16)
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        epochs = self.epochs or min(12, max(2, math.ceil(120 / steps_per_epoch)))
        # AdaLoRA's update starts in its r singular values alone (LoRA's in a whole factor):
        # Adam moves each by about one rate per step, so it needs a larger rate.
        # LoHa's and LoKr's updates are products of four small factors, IA3's a scale near 1:
        # both move slower per step than LoRA's at its rate. A soft prompt is a few
        # embedding rows that must move by about their own scale.
        lr = self.learning_rate or _RATES.get(self.method, 3e-4)
        return replace(
            self,
            rank=rank,
            alpha=self.alpha or 2 * rank,
            epochs=epochs,
            learning_rate=lr,
            convert_rank=self.convert_rank or rank,
        )


_RATES = {"adalora": 2e-3, "loha": 1e-3, "lokr": 1e-3, "ia3": 3e-3, "prompt-tuning": 3e-2}


def split_holdout(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A seeded held-out slice (8 to 64 examples); none below 24 examples."""
    if len(items) < 24 or fraction <= 0:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = min(64, max(8, round(len(items) * fraction)))
    return [items[i] for i in order[n:]], [items[i] for i in order[:n]]


def batches(items: list[Item], size: int, rng: random.Random) -> list[list[Item]]:
    """Shuffled, then sorted by length within windows of 4 batches: little padding,
    still random order."""
    order = items[:]
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), 4 * size):
        window = sorted(order[start : start + 4 * size], key=lambda it: len(it.prompt) + len(it.target))
        out += [window[i : i + size] for i in range(0, len(window), size)]
    rng.shuffle(out)
    return out


def load_model(base: Path, config: TrainConfig, total_steps: int, init_text: str | None = None) -> Any:
    """The base in fp32 (LoRA factors train in fp32) with the method's adapter;
    a soft prompt starts as `init_text`'s tokens (or sampled vocabulary rows)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model.to(device), _peft_config(base, config, total_steps, init_text))
    if config.method == "adalora":
        _orthonormal_factors(model)
    return model


def _peft_config(base: Path, config: TrainConfig, total_steps: int, init_text: str | None) -> Any:
    from peft import AdaLoraConfig, LoraConfig, PromptTuningConfig

    assert config.rank is not None and config.alpha is not None  # set by `TrainConfig.resolved`
    if config.method == "prompt-tuning":
        return PromptTuningConfig(
            num_virtual_tokens=config.virtual_tokens,
            prompt_tuning_init="TEXT" if init_text else "SAMPLE_VOCAB",
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=str(base) if init_text else None,
            task_type="CAUSAL_LM",
        )
    if config.method == "adalora":
        return AdaLoraConfig(
            init_r=config.rank + config.rank // 2,
            target_r=config.rank,
            lora_alpha=config.alpha,
            target_modules=list(config.targets),
            tinit=max(1, total_steps // 10),
            tfinal=max(1, total_steps // 5),
            total_step=total_steps,
            task_type="CAUSAL_LM",
        )
    if config.method in CONVERTED:
        return convert_config(config.method, config.rank, config.alpha, config.targets)
    targets = list(config.targets)
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets, task_type="CAUSAL_LM")


def _orthonormal_factors(model: Any) -> None:
    """Start AdaLoRA's P and Q orthonormal (peft draws them with std 0.02). The update
    is P diag(E) Q with E = 0 at first, so the model is unchanged, but the gradient on
    E is no longer scaled by 0.02**2: with Adam moving E about one learning rate per
    step, AdaLoRA learns as fast as LoRA on a few hundred steps instead of crawling
    until its orthogonality penalty has grown the factors."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                torch.nn.init.orthogonal_(p)


def batch_loss(model: Any, task: Task, items: list[Item]) -> torch.Tensor:
    rows = target_logprobs(model, items)
    losses = [item_loss(task, it, r) for it, r in zip(items, rows, strict=True)]
    return functools.reduce(operator.add, losses) / sum(len(it.target) for it in items)


def orthogonal_penalty(model: Any) -> torch.Tensor:
    """AdaLoRA's regulariser (peft adds it only when the model computes the loss)."""
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device), ord="fro"))
    return torch.stack(terms).mean()


@dataclass
class Outcome:
    config: TrainConfig
    examples: dict[str, int]
    steps: int
    seconds: float  # the whole run: loading, evaluations, training
    seconds_per_step: float  # optimizer steps only
    peak_rss_mb: float
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]
    interrupted: bool
    out_of_time: bool  # max_seconds ended the run before its steps did
    best_epoch: int | None
    served: dict[str, Any]  # the held-out slice as the server will answer it (training/served.py)
    conversion: dict[str, Any] | None  # a converted method's fidelity and accuracy (training/convert.py)

    def summary(self) -> dict[str, Any]:
        return asdict(self) | {"config": asdict(self.config)}


class Loop:
    """The optimizer, its schedule and the early-stopping state of one run."""

    def __init__(self, model: Any, task: Task, config: TrainConfig, total: int, progress: Callable | None) -> None:
        assert config.learning_rate is not None
        self.model, self.task, self.config, self.total = model, task, config, total
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
        warm = max(1, int(total * config.warmup))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
        )
        self.bar = progress_bar(total, progress)
        self.step, self.step_seconds = 0, 0.0
        self.deadline = time.perf_counter() + config.max_seconds if config.max_seconds is not None else math.inf
        self.out_of_time = False
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, dict] | None = None

    def run(self, items: list[Item], held: list[Item]) -> bool:
        """Train until the step budget, the last epoch, early stopping or the deadline
        (at least one step); → interrupted."""
        rng = random.Random(self.config.seed)
        assert self.config.epochs is not None
        try:
            for epoch in range(1, self.config.epochs + 1):
                for batch in batches(items, self.config.batch_size, rng):
                    self.optimize(batch)
                    self.out_of_time = time.perf_counter() >= self.deadline
                    if self.step >= self.total or self.out_of_time:
                        break
                if self.evaluated(epoch, held) or self.step >= self.total or self.out_of_time:
                    break
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: writing the best adapter so far", self.step)
            return True
        finally:
            if self.best is not None:
                self.model.load_state_dict(self.best[2], strict=False)
        return False

    def optimize(self, batch: list[Item]) -> None:
        started = time.perf_counter()
        loss = batch_loss(self.model, self.task, batch)
        adalora = self.config.method == "adalora"
        if adalora:
            loss = loss + self.model.peft_config["default"].orth_reg_weight * orthogonal_penalty(self.model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if adalora:
            self.model.base_model.update_and_allocate(self.step)
        self.optimizer.zero_grad()
        self.schedule.step()
        self.step += 1
        self.step_seconds += time.perf_counter() - started
        self.bar(loss.item())

    def evaluated(self, epoch: int, held: list[Item]) -> bool:
        """Score the held-out slice, keep the best epoch; → stop early."""
        scores = evaluate(self.model, self.task, held) | {"epoch": epoch, "step": self.step}
        self.history.append(scores)
        log.info("epoch %d: %s", epoch, scores)
        if not held or self.config.method == "adalora":  # AdaLoRA's budget is set by its whole schedule
            return False
        if self.best is None or scores["loss"] < self.best[0]:
            self.best = (scores["loss"], epoch, _adapter_state(self.model))
            return False
        return epoch - self.best[1] >= self.config.patience


def train(
    task: Task,
    items: list[Item],
    base: Path,
    out: Path,
    config: TrainConfig,
    progress: Callable[[int], Any] | None = None,
) -> tuple[Any, Outcome]:
    """Train, keep the best epoch by held-out loss, save the adapter to `out`.
    → (the peft model, what happened)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    train_items, held = split_holdout(items, config.holdout, config.seed)
    config = config.resolved(len(train_items))
    assert config.epochs is not None
    steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
    total = min(config.max_steps or 10**9, steps_per_epoch * config.epochs)
    model = load_model(base, config, total, task.spec.instruction if task.spec else None)
    before = evaluate(model, task, held)
    loop = Loop(model, task, config, total, progress)
    interrupted = loop.run(train_items, held)
    after = evaluate(model, task, held)
    conversion = None
    if config.method in CONVERTED:  # the unconverted adapter beside the served one
        assert config.convert_rank is not None
        model.save_pretrained(out.with_name(f"{out.name}.{config.method}"))
        model, conversion = convert(model, task, held, base, out, config.convert_rank, config.method)
    else:
        save_adapter(model, config, out)
    served = {} if config.method == "prompt-tuning" else served_path(model, task, held, config.seed)  # not served
    outcome = Outcome(
        config=config,
        examples={"train": len(train_items), "held_out": len(held)},
        steps=loop.step,
        seconds=time.perf_counter() - started,
        seconds_per_step=loop.step_seconds / max(1, loop.step),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        before=before,
        after=after,
        history=loop.history,
        interrupted=interrupted,
        out_of_time=loop.out_of_time,
        best_epoch=loop.best[1] if loop.best else None,
        served=served,
        conversion=conversion,
    )
    return model, outcome


def _adapter_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def save_adapter(model: Any, config: TrainConfig, out: Path) -> None:
    """LoRA (and a soft prompt) as peft writes it; AdaLoRA exported to a plain LoRA vLLM serves."""
    out.mkdir(parents=True, exist_ok=True)
    if config.method == "adalora":
        from adaptserve.training.export import adalora_to_lora

        adalora_to_lora(model, out)
    else:
        model.save_pretrained(out)


def progress_bar(total: int, progress: Callable[[int], Any] | None, desc: str = "train") -> Callable[[float], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", desc=desc, disable=progress is not None)
    done = 0

    def advance(loss: float) -> None:
        nonlocal done
        done += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if progress is not None:
            progress(done)

    return advance
