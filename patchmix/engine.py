"""The one training loop of every script: pretraining (any method), the linear probe and fine-tuning.

What is being trained is a :class:`TrainTask`: it sets the scheduled values of a step, turns a batch into a
loss, and may act before a step (an EMA teacher), after the backward pass, after the optimiser step (a model
EMA) and at the end of an epoch (an evaluation). Everything else lives here, once, for all of them:

* the step: schedule, device transfer, autocast, backward through a GradScaler (fp16), optional gradient
  clipping, optimiser step (:func:`train_step`, also used by the benchmark);
* what every run logs besides the task's terms: the gradient norm (the one clipping computes, or computed on
  logged steps only when clipping is off), images per second and, on GPUs, the peak memory;
* a non-finite loss on any process stops every process at the same step with the same one-line message
  (:class:`NonFiniteLossError`), before the weights are updated;
* SIGTERM / SIGUSR1 (cluster pre-emption) or a step budget stop every process at the same step boundary; the
  exact position is saved and a re-run continues with the same batches, augmentations and random draws;
* atomic checkpoints (model, optimiser, scaler, position, the random state of every process, the task's own
  state), numbered copies, the replica check after every epoch, the progress bar, TensorBoard and ``log.txt``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import torch
import torch.distributed as dist

from patchmix.checkpoint import (
    FORMAT_VERSION,
    LATEST_NAME,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from patchmix.config import ConfigError
from patchmix.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    collective_device,
    get_world_size,
    is_distributed,
    parameters_in_sync,
)
from patchmix.rundir import keep_numbered_copy
from patchmix.runlog import RunLogger
from patchmix.schedules import StepValues

__all__ = ["amp_dtype", "StepOutput", "TrainTask", "NonFiniteLossError", "StopFlag", "LoopSettings", "Position",
           "Trainer", "train_step", "no_timer", "total_gradient_norm", "peak_memory_gib"]

Timer = Callable[[str], contextlib.AbstractContextManager]


def no_timer(name: str) -> contextlib.AbstractContextManager:
    """The default part timer: times nothing (the benchmark passes a real one)."""
    return contextlib.nullcontext()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (None = full precision)."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


class StepOutput(NamedTuple):
    """What one step computes: the loss to minimise and the terms to log (detached scalars)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


class TrainTask(ABC):
    """One kind of training, as the engine sees it. ``model`` is what checkpoints save (never DDP-wrapped)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def schedule(self, step: int) -> StepValues:
        """Set the optimiser's learning rate (and weight decay) for global step ``step``; return the values."""

    @abstractmethod
    def loss(self, batch: Any, values: StepValues, timer: Timer = no_timer) -> StepOutput:
        """The forward pass of one step (called under autocast; compute the loss itself in float32)."""

    def train_mode(self) -> None:
        self.model.train()

    def substeps(self, batch: Any) -> list[Any]:
        """The optimiser steps one loaded batch makes (default: one). APS, for instance, takes one step per
        disjoint sampling of the same images. ``LoopSettings.steps_per_batch`` must equal the length."""
        return [batch]

    def before_step(self, values: StepValues) -> None:
        """Before the forward pass (an EMA teacher is updated here, as in MoCo v3)."""

    def after_backward(self, values: StepValues) -> None:
        """After the backward pass, before clipping and the optimiser step (e.g. cancel some gradients)."""

    def after_step(self, step: int, values: StepValues) -> None:
        """After the optimiser step of global step ``step`` (e.g. a model EMA, a running center)."""

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """After epoch ``epoch`` (0-based) was trained, before its checkpoint: evaluate, add entries to
        ``record`` (it becomes the epoch's line of ``log.txt``)."""

    def epoch_line(self, record: dict[str, Any], epochs: int) -> str:
        """The line printed after an epoch."""
        shown = {k: v for k, v in record.items() if k.startswith(("train_", "test_"))}
        return f"epoch {record['epoch']}/{epochs}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())

    def extra_state(self) -> dict[str, Any]:
        """Entries the task adds to every checkpoint (plain tensors, numbers, strings, lists and dicts)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved (``state`` is the whole checkpoint)."""

    def generators(self) -> dict[str, torch.Generator]:
        """Random generators of the task whose state checkpoints keep (besides torch, numpy and random)."""
        return {}

    def clip_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def clip_gradients(self, max_norm: float) -> float:
        """Clip the (unscaled) gradients for ``--clip-grad``; return the norm before clipping, which is logged.
        Default: the global norm over :meth:`clip_parameters` (DINO, for one, clips every tensor on its own)."""
        return torch.nn.utils.clip_grad_norm_(self.clip_parameters(), max_norm).item()

    def gradient_norm(self) -> float:
        """The global norm of the (unscaled) gradients of :meth:`clip_parameters`, logged when nothing clips."""
        return total_gradient_norm(self.clip_parameters())


def total_gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """The L2 norm of all gradients together, as ``clip_grad_norm_`` computes it, without touching them."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: the foreach kernels clip_grad_norm_ uses
        return torch.nn.utils.get_total_norm(grads).item()
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads])).item()


class NonFiniteLossError(RuntimeError):
    """The loss is NaN or infinite on at least one process; every process raises it at the same step."""


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device) for item in batch)
    return batch


def _check_finite(scalars: dict[str, float], values: StepValues, where: str) -> None:
    """Raise :class:`NonFiniteLossError` on every process, with the same message, if any process's loss is not
    finite (one all-reduce per step; the terms are gathered only on failure)."""
    bad = not math.isfinite(scalars["loss"])
    rank = 0
    if is_distributed():
        device = collective_device()
        flag = torch.tensor([float(bad)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not flag.item():
            return
        names = sorted(scalars)
        local = torch.tensor([float(bad)] + [scalars[n] for n in names], dtype=torch.float64, device=device)
        gathered = [torch.zeros_like(local) for _ in range(get_world_size())]
        dist.all_gather(gathered, local)
        rank = next(r for r, row in enumerate(gathered) if row[0].item())
        scalars = dict(zip(names, gathered[rank][1:].tolist()))
    elif not bad:
        return
    terms = ", ".join(f"{k}={scalars[k]:.4g}" for k in sorted(scalars))
    scheduled = ", ".join(f"{k}={v:.3g}" for k, v in asdict(values).items())
    raise NonFiniteLossError(
        f"non-finite loss at {where} on process {rank} of {get_world_size()}: {terms}; {scheduled}. Lower "
        f"--base-lr, set --clip-grad (e.g. 3.0), or use --amp bf16/none instead of fp16, and re-run with "
        f"--allow-config-change to continue from the last checkpoint with the new setting.")


def train_step(task: TrainTask, scaler: torch.amp.GradScaler, batch: Any, step: int, device: torch.device,
               autocast: torch.dtype | None = None, clip_grad: float = 0.0, where: str = "",
               timer: Timer = no_timer, measure_grad_norm: bool = False) -> tuple[StepValues, dict[str, float]]:
    """One optimiser step of ``task``; returns the scheduled values and the logged scalars.

    ``grad_norm`` (before clipping) is among the scalars when clipping is on (clipping computes it anyway) or
    when ``measure_grad_norm`` asks for it; it is never computed twice. ``timer(name)`` wraps each part
    (schedule, data_to_device, forward, backward, optimizer); the task's forward may time sub-parts with it too.
    """
    with timer("schedule"):
        values = task.schedule(step)
        task.before_step(values)
    with timer("data_to_device"):
        batch = _to_device(batch, device)
    with timer("forward"):
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            output = task.loss(batch, values, timer)
        scalars = {name: value.item() for name, value in output.terms.items()}
        scalars["loss"] = output.loss.item()
    _check_finite(scalars, values, where or f"step {step}")
    with timer("backward"):
        task.optimizer.zero_grad(set_to_none=True)
        scaler.scale(output.loss).backward()
        task.after_backward(values)
    with timer("optimizer"):
        if clip_grad > 0 or measure_grad_norm:
            scaler.unscale_(task.optimizer)  # the true gradients (fp16: unscaled once; the step knows it)
            scalars["grad_norm"] = task.clip_gradients(clip_grad) if clip_grad > 0 else task.gradient_norm()
        scaler.step(task.optimizer)
        scaler.update()
        task.after_step(step, values)
    return values, scalars


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (pre-emption) or a step budget; checked between steps on every process."""

    def __init__(self, max_steps: int = 0) -> None:
        self.requested = False  # a signal arrived
        self.triggered = False  # step_done() said stop (signal, step budget, or another process)
        self.reason = ""
        self.max_steps = max_steps
        self.steps = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.reason = f"received {signal.Signals(signum).name}"

    def step_done(self, steps: int = 1) -> bool:
        """Count ``steps`` optimiser steps; return True when every process should stop now."""
        self.steps += steps
        stop = self.requested or (self.max_steps > 0 and self.steps >= self.max_steps)
        if stop and not self.reason:
            self.reason = f"stop_after_steps={self.max_steps} reached"
        if is_distributed():  # one rank's signal stops all, at the same step
            flag = torch.tensor([float(stop)], device=collective_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
            if stop and not self.reason:
                self.reason = "another process was asked to stop"
        self.triggered = stop
        return stop


@dataclass(frozen=True)
class LoopSettings:
    """How the engine runs a task (from the config of the script)."""

    epochs: int
    steps_per_epoch: int  # optimiser steps: loaded batches x steps_per_batch
    batch_per_process: int
    log_freq: int = 10
    clip_grad: float = 0.0
    autocast: torch.dtype | None = None
    stop_after_steps: int = 0
    save_freq: int | None = None  # keep checkpoint_EEEE.pth every N epochs and at the end (None: never)
    name: str = "train"  # progress bar label
    steps_per_batch: int = 1  # optimiser steps per loaded batch (TrainTask.substeps)
    wandb_project: str = ""  # also log to this Weights & Biases project


@dataclass(frozen=True)
class Position:
    """Where a run is: ``step_in_epoch`` steps of epoch ``epoch`` (0-based) are done."""

    epoch: int = 0
    step_in_epoch: int = 0


@dataclass
class _Meter:
    """Epoch means of the step scalars; each over the steps that had it (``grad_norm`` without clipping: the
    logged steps, the same on every process)."""

    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def averages(self, device: torch.device) -> dict[str, float]:
        if not self.counts:
            return {}
        keys = sorted(self.totals)
        values = torch.tensor([self.totals[k] / self.counts[k] for k in keys], device=device, dtype=torch.float64)
        return dict(zip(keys, all_reduce_mean(values).tolist()))


def peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory tensors have held since the last reset (``torch.cuda.max_memory_allocated``), in GiB;
    None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


class Trainer:
    """Runs a :class:`TrainTask` over epochs of ``loader``, checkpointing into ``output_dir``.

    ``sampler`` must be a :class:`patchmix.data.ResumableDistributedSampler` feeding a per-image seeded
    dataset, so that an epoch can start at any step with the augmentations it would have had.
    ``checkpoint_extra`` holds constant entries of every checkpoint (the config, the backbone's sizes).
    """

    def __init__(self, task: TrainTask, loader: Iterable, sampler: Any, settings: LoopSettings, env: DistInfo,
                 output_dir: Path, checkpoint_extra: dict[str, Any] | None = None) -> None:
        self.task, self.loader, self.sampler, self.settings, self.env = task, loader, sampler, settings, env
        self.output_dir = output_dir
        self.latest = output_dir / LATEST_NAME
        self.extra = dict(checkpoint_extra or {})
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=settings.autocast == torch.float16)
        self.stop_reason = ""

    # -- checkpoints ---------------------------------------------------------------------------------------

    def save(self, path: Path, position: Position) -> Path:
        """Collective: every process contributes its random state; rank 0 writes the file atomically.

        The weights are stored under ``model`` and, for the official scripts (which read
        ``checkpoint['state_dict']``), under ``state_dict``: the same dict, which pickle writes once, so the
        file is not larger.
        """
        rng = [capture_rng(self.task.generators())]
        if self.env.world_size > 1:
            gathered: list = [None] * self.env.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.env.is_main:
            weights = self.task.model.state_dict()
            state = {"format_version": FORMAT_VERSION, "model": weights, "state_dict": weights,
                     "optimizer": self.task.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                     "epoch": position.epoch, "step_in_epoch": position.step_in_epoch,
                     "global_step": position.epoch * self.settings.steps_per_epoch + position.step_in_epoch,
                     "rng": rng, **self.extra, **self.task.extra_state()}
            save_checkpoint(state, path)
        barrier()
        return path

    def restore(self, path: Path) -> Position:
        """Load a checkpoint written by :meth:`save` (or by earlier versions of this code)."""
        state = load_checkpoint(path)
        if "model" not in state or "optimizer" not in state:
            raise CheckpointError(f"{path} is not a resumable checkpoint of this code (it has {sorted(state)[:6]}). "
                                  f"To start from other weights, train a new run; --resume only continues runs "
                                  f"written by this code.")
        if int(state.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer version of this code (format "
                                  f"{state['format_version']} > {FORMAT_VERSION}); update the code.")
        try:
            self.task.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ConfigError(f"checkpoint {path} does not fit this model ({str(error).splitlines()[0]}...). "
                              f"It was saved with backbone {state.get('backbone')}; use matching --arch / "
                              f"--patch-size / --img-size / head settings, or another --output-dir.") from error
        self.task.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.task.load_extra_state(state)
        rng = state.get("rng") or []
        if self.env.rank < len(rng):  # another number of processes: exactness is lost anyway
            restore_rng(rng[self.env.rank], self.task.generators())
        position = Position(int(state["epoch"]), int(state.get("step_in_epoch", 0)))
        if self.env.is_main:
            print(f"Resumed from {path}: epoch {position.epoch}, step {position.step_in_epoch} of "
                  f"{self.settings.steps_per_epoch}.")
        return position

    # -- the loop --------------------------------------------------------------------------------------------

    def fit(self, start: Position = Position()) -> bool:
        """Train from ``start`` to the last epoch; return True when the run is complete, False when it stopped
        early (pre-emption or step budget; the position is saved, a re-run continues)."""
        s = self.settings
        stop = StopFlag(s.stop_after_steps).install()
        done = start.epoch
        try:
            with RunLogger(self.output_dir, self.env.is_main, s.epochs * s.steps_per_epoch,
                           start.epoch * s.steps_per_epoch + start.step_in_epoch, s.name, s.wandb_project,
                           self.extra.get("config")) as log:  # the resolved config every caller saves
                for epoch in range(start.epoch, s.epochs):
                    first = start.step_in_epoch if epoch == start.epoch else 0
                    self.sampler.set_epoch(epoch)
                    self.sampler.set_start(first // s.steps_per_batch * s.batch_per_process)
                    tic = time.time()
                    metrics, steps_done = self._epoch(epoch, first, stop, log)
                    if steps_done < s.steps_per_epoch:  # stopped mid-epoch: save the exact position
                        self.save(self.latest, Position(epoch, steps_done))
                        break
                    if not parameters_in_sync(self.task.model):
                        raise RuntimeError(f"the processes' parameters differ after epoch {epoch + 1}; the run is "
                                           f"broken.")
                    record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in metrics.items()},
                              "epoch_seconds": time.time() - tic, "world_size": self.env.world_size,
                              "replicas_in_sync": True}
                    self.task.end_epoch(epoch, record)
                    self.save(self.latest, Position(epoch + 1, 0))
                    if self.env.is_main and s.save_freq is not None:
                        keep_numbered_copy(self.latest, epoch + 1, s.save_freq, s.epochs)
                    log.epoch(record, self.task.epoch_line(record, s.epochs))
                    done = epoch + 1
                    if stop.triggered:
                        break
        finally:  # also on errors: give the signals back
            stop.uninstall()
        self.stop_reason = stop.reason
        if done < s.epochs and self.env.is_main:
            print(f"Stopped ({stop.reason}); saved {self.latest}. Run the same command again to resume.")
        return done == s.epochs

    def _epoch(self, epoch: int, first: int, stop: StopFlag, log: RunLogger) -> tuple[dict[str, float], int]:
        s = self.settings
        meter = _Meter()
        steps_done, images, tic = first, 0, time.perf_counter()
        images_per_step = s.batch_per_process * self.env.world_size / s.steps_per_batch  # over all processes
        window_steps, window_tic = 0, tic  # the steps since the last logged one, for its images/s
        values = None
        if self.env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.env.device)  # the peak of this epoch's training
        self.task.train_mode()
        for batch in self.loader:
            parts = self.task.substeps(_to_device(batch, self.env.device))
            for part in parts:
                step = epoch * s.steps_per_epoch + steps_done
                logged = (step + 1) % s.log_freq == 0
                values, scalars = train_step(self.task, self.scaler, part, step, self.env.device, s.autocast,
                                             s.clip_grad, where=f"epoch {epoch}, step {step} (global)",
                                             measure_grad_norm=logged)
                meter.update(scalars)
                steps_done += 1
                window_steps += 1
                if logged:
                    now = time.perf_counter()  # after the step's .item(): its GPU work is done
                    speed = {"images_per_second": window_steps * images_per_step / max(now - window_tic, 1e-9)}
                    memory = peak_memory_gib(self.env.device)
                    if memory is not None:
                        speed["peak_memory_gib"] = memory
                    log.scalars(step + 1, {**scalars, **asdict(values), **speed})
                    window_steps, window_tic = 0, now
                log.advance(loss=f"{scalars['loss']:.4f}", lr=f"{values.lr:.2e}")
            images += s.batch_per_process * self.env.world_size
            if stop.step_done(len(parts)) or steps_done >= s.steps_per_epoch:  # between loaded batches only
                break
        metrics = meter.averages(self.env.device)
        metrics.update(lr=values.lr if values is not None else 0.0,
                       images_per_second=images / max(time.perf_counter() - tic, 1e-9))
        memory = peak_memory_gib(self.env.device)
        if memory is not None:
            metrics["peak_memory_gib"] = memory
        return metrics, steps_done
