"""The engine on its own, with a task small enough to reason about: substeps, stopping, exact resume, logging."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from patchmix.data import resumable_loader
from patchmix.distributed import DistInfo
from patchmix.engine import (
    LoopSettings,
    Position,
    StepOutput,
    Trainer,
    TrainTask,
    peak_memory_gib,
    total_gradient_norm,
)
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


class CountingRegression(Regression):
    """Counts how often the gradient norm is computed, by clipping or on its own."""

    def __init__(self, parts: int) -> None:
        super().__init__(parts)
        self.clipped = self.measured = 0
        self.norms: list[float] = []

    def clip_gradients(self, max_norm: float) -> float:
        self.clipped += 1
        self.norms.append(total_gradient_norm(self.model.parameters()))  # what clipping must report
        return super().clip_gradients(max_norm)

    def gradient_norm(self) -> float:
        self.measured += 1
        norm = super().gradient_norm()
        self.norms.append(norm)
        return norm


def logged_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("clip_grad", [0.0, 0.5])
def test_the_gradient_norm_and_speed_are_logged_and_the_norm_computed_once(tmp_path, clip_grad):
    task = CountingRegression(parts=1)
    loader, sampler = resumable_loader(data(), lambda item: item, seed=3, batch_per_process=8, rank=0,
                                       world_size=1, num_workers=0)
    settings = LoopSettings(epochs=2, steps_per_epoch=5, batch_per_process=8, log_freq=2, clip_grad=clip_grad)
    assert Trainer(task, loader, sampler, settings, CPU, tmp_path).fit()
    logged_steps = [2, 4, 6, 8, 10]
    if clip_grad:  # clipping computes the norm of every step, and nothing computes it again
        assert (task.clipped, task.measured) == (10, 0)
    else:  # without clipping, only the logged steps pay for it
        assert (task.clipped, task.measured) == (0, 5)
    scalars = logged_scalars(tmp_path)
    norms = task.norms if not clip_grad else [task.norms[step - 1] for step in logged_steps]
    assert [step for step, _ in scalars["train/grad_norm"]] == logged_steps
    assert [value for _, value in scalars["train/grad_norm"]] == pytest.approx(norms, rel=1e-6)
    assert all(value > 0 for _, value in scalars["train/images_per_second"])
    assert "train/peak_memory_gib" not in scalars  # on GPUs only
    lines = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    # the epoch means: of every step when clipping, of the logged steps (2, 4 | 6, 8, 10) otherwise
    epoch_norms = [task.norms[:5], task.norms[5:]] if clip_grad else [task.norms[:2], task.norms[2:]]
    assert [line["train_grad_norm"] for line in lines] == pytest.approx([sum(n) / len(n) for n in epoch_norms])
    assert all(line["train_images_per_second"] > 0 for line in lines)
    assert [step for step, _ in scalars["epoch/train_loss"]] == [1, 2]  # log.txt's numbers, in TensorBoard too


def test_peak_memory_is_reported_in_gib_on_cuda(monkeypatch):
    assert peak_memory_gib(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2 ** 30)
    assert peak_memory_gib(torch.device("cuda", 0)) == 3.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_peak_memory_is_logged_on_a_gpu(tmp_path):
    task = Regression(parts=1)
    task.model.cuda()
    loader, sampler = resumable_loader(data(), lambda item: item, seed=3, batch_per_process=8, rank=0,
                                       world_size=1, num_workers=0)
    gpu = DistInfo(0, 1, 0, torch.device("cuda", 0))
    assert Trainer(task, loader, sampler, LoopSettings(1, 5, 8, log_freq=1), gpu, tmp_path).fit()
    assert all(value > 0 for _, value in logged_scalars(tmp_path)["train/peak_memory_gib"])
    assert json.loads((tmp_path / "log.txt").read_text().splitlines()[0])["train_peak_memory_gib"] > 0
