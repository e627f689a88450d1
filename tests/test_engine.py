"""The engine on its own, with a task small enough to reason about: substeps, stopping, exact resume."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from patchmix.data import resumable_loader
from patchmix.distributed import DistInfo
from patchmix.engine import LoopSettings, Position, StepOutput, Trainer, TrainTask
from patchmix.schedules import StepValues

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


class Regression(TrainTask):
    """Least squares with a linear model; ``parts`` optimiser steps per loaded batch (one per slice)."""

    def __init__(self, parts: int) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.parts = parts
        self.seen: list[int] = []  # global steps, in the order they ran

    def schedule(self, step: int) -> StepValues:
        self.seen.append(step)
        for group in self.optimizer.param_groups:
            group["lr"] = 0.1 / (1 + step)
        return StepValues(0.1 / (1 + step), 0.0)

    def substeps(self, batch):
        x, y = batch
        return [(x[i::self.parts], y[i::self.parts]) for i in range(self.parts)]

    def loss(self, batch, values, timer=None) -> StepOutput:
        x, y = batch
        noise = 0.01 * torch.randn(()).item()  # consumes the global RNG: resume must restore it
        loss = ((self.model(x).squeeze(1) - y) ** 2).mean() + noise
        return StepOutput(loss, {"noise": torch.tensor(noise)})


def data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=generator)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))


def train(tmp_path, parts: int, stop_after: int = 0, resume: bool = False) -> tuple[Trainer, bool]:
    task = Regression(parts)
    loader, sampler = resumable_loader(data(), lambda item: item, seed=3, batch_per_process=8, rank=0,
                                       world_size=1, num_workers=0)
    settings = LoopSettings(epochs=2, steps_per_epoch=5 * parts, batch_per_process=8, log_freq=1,
                            stop_after_steps=stop_after, steps_per_batch=parts)
    trainer = Trainer(task, loader, sampler, settings, CPU, tmp_path)
    start = trainer.restore(tmp_path / "checkpoint.pth") if resume else Position()
    return trainer, trainer.fit(start)


def test_each_loaded_batch_makes_its_substeps(tmp_path):
    trainer, finished = train(tmp_path, parts=2)
    assert finished and trainer.task.seen == list(range(20))
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (2, 20)


def test_a_step_budget_stops_at_the_end_of_a_loaded_batch_and_resumes_exactly(tmp_path):
    straight, _ = train(tmp_path / "straight", parts=2)
    stopped, finished = train(tmp_path / "pieces", parts=2, stop_after=3)  # 3 steps: the batch of steps 2-3
    assert not finished and stopped.task.seen == [0, 1, 2, 3]
    state = torch.load(tmp_path / "pieces" / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 4)
    resumed, finished = train(tmp_path / "pieces", parts=2, resume=True)
    assert finished and resumed.task.seen == list(range(4, 20))
    for a, b in zip(straight.task.model.parameters(), resumed.task.model.parameters()):
        assert torch.equal(a, b)
