"""Per-iteration schedules of the pretraining recipe, as pure functions of the global step.

Being functions of the step (not stateful objects) they need nothing in a checkpoint: a resumed run recomputes
exactly the values an uninterrupted run would have used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["cosine", "warmup_cosine", "StepValues", "MomentumStepValues", "Schedules"]


def cosine(start: float, end: float, progress: float) -> float:
    """Half-cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float,
                  warmup_start: float = 0.0) -> float:
    """Linear warmup from ``warmup_start`` to ``peak`` over ``warmup_steps`` (``peak`` at the last warm-up step,
    like DINO's ``linspace``), then cosine to ``final``."""
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / max(1, warmup_steps - 1)
    return cosine(peak, final, (step - warmup_steps) / max(1, total_steps - warmup_steps))


@dataclass(frozen=True)
class StepValues:
    """The scheduled values of one optimiser step; the engine sets them and logs every field as train/NAME."""

    lr: float
    weight_decay: float


@dataclass(frozen=True)
class MomentumStepValues(StepValues):
    """Plus the EMA momentum of a teacher / momentum encoder and the contrastive temperature."""

    momentum: float
    temperature: float


@dataclass(frozen=True)
class Schedules:
    """Learning rate, weight decay, EMA momentum and temperature of every step of a run.

    ``momentum_per_epoch`` reproduces the official code, whose momentum changes once per epoch because a loop
    variable is shadowed (it evaluates the cosine at ``epoch + 1/steps_per_epoch``); the default updates it
    every iteration, as the paper and MoCo v3 intend.
    """

    steps_per_epoch: int
    epochs: int
    peak_lr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    weight_decay_end: float
    momentum: float
    momentum_per_epoch: bool = False
    temperature: float = 0.2
    warmup_temperature: float = 0.2
    warmup_temperature_epochs: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lr(self, step: int) -> float:
        warmup = int(round(self.warmup_epochs * self.steps_per_epoch))
        return warmup_cosine(step, self.total_steps, warmup, self.peak_lr, self.min_lr)

    def wd(self, step: int) -> float:
        return cosine(self.weight_decay, self.weight_decay_end, step / max(1, self.total_steps))

    def ema_momentum(self, step: int) -> float:
        if self.momentum_per_epoch:
            epoch_progress = step // self.steps_per_epoch + 1.0 / self.steps_per_epoch
        else:
            epoch_progress = step / self.steps_per_epoch
        return 1.0 - (1.0 - self.momentum) * 0.5 * (1.0 + math.cos(math.pi * epoch_progress / self.epochs))

    def at(self, step: int) -> MomentumStepValues:
        """Every value of global step ``step``."""
        return MomentumStepValues(self.lr(step), self.wd(step), self.ema_momentum(step), self.temp(step))

    def temp(self, step: int) -> float:
        epoch_progress = step / self.steps_per_epoch
        if epoch_progress < self.warmup_temperature_epochs:
            fraction = epoch_progress / self.warmup_temperature_epochs
            return self.warmup_temperature + (self.temperature - self.warmup_temperature) * fraction
        return self.temperature
