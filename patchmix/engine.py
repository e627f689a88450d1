"""The pretraining step and epoch loop, plus the small pieces every training script needs."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay

from patchmix.distributed import all_reduce_mean, get_world_size, is_distributed, is_main_process
from patchmix.loss import LossWeights, PatchMixLoss
from patchmix.mix import patch_mix
from patchmix.models import PatchMixModel
from patchmix.schedules import Schedules

__all__ = ["amp_dtype", "build_optimizer", "required_outputs", "StopFlag", "NonFiniteLossError", "StepContext",
           "train_step", "train_one_epoch", "EpochResult", "JsonLog"]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (None = full precision)."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def build_optimizer(model: torch.nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with two groups: decay on every trainable tensor of >= 2 dims that is not a bias (this includes
    the ViT's cls_token and pos_embed, as in the official code), none on biases and 1-D norm weights.

    The decayed group is marked ``apply_weight_decay`` so the weight-decay schedule knows which to set.
    """
    groups = param_groups_weight_decay(model, weight_decay=1.0)  # any non-zero value: only the split matters
    for group in groups:
        group["apply_weight_decay"] = group["weight_decay"] > 0
        group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8)


def required_outputs(weights: LossWeights, local_crops: bool) -> frozenset[str]:
    """The model outputs the active loss terms use (so switched-off terms cost no forward pass)."""
    needs: set[str] = set()
    if weights.o2o:
        needs |= {"q1", "k2"}
    if weights.m2o:
        needs |= {"q2_mixed", "k1"}
    if weights.m2m:
        needs |= {"q2_mixed", "k1_mixed"}
    if local_crops and (weights.local_o2o or weights.local_m2o):
        needs |= {"k1", "k2"}
    return frozenset(needs)


class NonFiniteLossError(RuntimeError):
    pass


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

    def step_done(self) -> bool:
        """Count a step; return True when every process should stop now."""
        self.steps += 1
        stop = self.requested or (self.max_steps > 0 and self.steps >= self.max_steps)
        if stop and not self.reason:
            self.reason = f"stop_after_steps={self.max_steps} reached"
        if is_distributed():  # one rank's signal stops all, at the same step
            flag = torch.tensor([float(stop)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
            if stop and not self.reason:
                self.reason = "another process was asked to stop"
        self.triggered = stop
        return stop


@dataclass
class EpochResult:
    metrics: dict[str, float]
    steps_done: int  # steps of this epoch completed, counting those before a resume
    stopped: bool


@dataclass
class _Meter:
    totals: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def update(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        self.count += 1

    def averages(self, device: torch.device) -> dict[str, float]:
        if not self.count:
            return {}
        keys = sorted(self.totals)
        values = torch.tensor([self.totals[k] / self.count for k in keys], device=device, dtype=torch.float64)
        values = all_reduce_mean(values)
        return dict(zip(keys, values.tolist()))


def _set_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_weight_decay"):
            group["weight_decay"] = wd


@dataclass
class StepContext:
    """Everything a training step uses that does not change from step to step."""

    model: torch.nn.Module  # the module to call: DistributedDataParallel or the PatchMixModel itself
    criterion: PatchMixLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    num_mix: int
    patch_size: int
    mix_generator: torch.Generator
    autocast_dtype: torch.dtype | None = None
    clip_grad: float = 0.0

    @property
    def net(self) -> PatchMixModel:
        return self.model.module if hasattr(self.model, "module") else self.model


def _no_timer(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def train_step(ctx: StepContext, views: list[torch.Tensor], lr: float, wd: float, momentum: float,
               temperature: float, where: str = "", timer: Callable[[str], Any] = _no_timer) -> dict[str, float]:
    """One PatchMix step: EMA update, mixing, forward, loss, backward, optimiser step. Returns the loss terms.

    ``timer(name)`` wraps each part (momentum, data_to_device, mixer, forward, backward, optimizer); the
    benchmark passes a timing context, training passes nothing.
    """
    weights = ctx.criterion.weights
    _set_schedules(ctx.optimizer, lr, wd)
    with timer("momentum"):
        ctx.net.update_momentum(momentum)  # before the forward pass, as in MoCo v3
    with timer("data_to_device"):
        views = [v.to(ctx.device, non_blocking=True) for v in views]
    x1, x2, crops = views[0], views[1], views[2:]
    needs = required_outputs(weights, local_crops=bool(crops))
    with timer("mixer"):
        x2_mixed, mix_to_origin, mix_to_mix = patch_mix(x2, ctx.num_mix, ctx.patch_size, ctx.mix_generator)
        x1_mixed = patch_mix(x1, ctx.num_mix, ctx.patch_size, ctx.mix_generator)[0] if "k1_mixed" in needs else None
        local = torch.cat(crops) if crops and weights.local_o2o else None
        local_mixed = None
        if crops and weights.local_m2o:
            local_mixed = torch.cat([patch_mix(c, ctx.num_mix, ctx.patch_size, ctx.mix_generator)[0] for c in crops])

    with timer("forward"):
        with torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype or torch.float32,
                            enabled=ctx.autocast_dtype is not None):
            outputs = ctx.model(x1, x2, x1_mixed, x2_mixed, local=local, local_mixed=local_mixed, needs=needs)
        loss, terms = ctx.criterion(outputs, mix_to_origin, mix_to_mix, temperature)
        values = {name: value.item() for name, value in terms.items()}
        values["loss"] = loss.item()
    finite = math.isfinite(values["loss"])
    if is_distributed():  # every process stops at the same step, none is left waiting in a collective
        flag = torch.tensor([0.0 if finite else 1.0], device=ctx.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        finite = flag.item() == 0.0
    if not finite:
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss at {where or 'this step'} (on at least one process; this "
                                 f"one: {detail}); lr={lr:.3g}, temperature={temperature}. Lower --base-lr, set "
                                 f"--clip-grad (e.g. 3.0), or use --amp bf16/none instead of fp16, and re-run with "
                                 f"--allow-config-change to continue from the last checkpoint with the new "
                                 f"setting.")
    with timer("backward"):
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
    with timer("optimizer"):
        if ctx.clip_grad > 0:
            ctx.scaler.unscale_(ctx.optimizer)
            params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
            values["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, ctx.clip_grad).item()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    return values


def train_one_epoch(ctx: StepContext, loader: Iterable, schedules: Schedules, epoch: int, start_step: int,
                    stop: StopFlag, writer: Any = None, log_freq: int = 10, progress: Any = None) -> EpochResult:
    """Train for the rest of one epoch (from ``start_step``); stop early at a step boundary if asked."""
    meter = _Meter()
    step_in_epoch = start_step
    tic, images_seen = time.perf_counter(), 0
    ctx.model.train()
    for views, _ in loader:
        step = epoch * schedules.steps_per_epoch + step_in_epoch
        lr, wd, momentum, temperature = (schedules.lr(step), schedules.wd(step), schedules.ema_momentum(step),
                                         schedules.temp(step))
        values = train_step(ctx, views, lr, wd, momentum, temperature, where=f"epoch {epoch}, step {step} (global)")
        meter.update(values)
        step_in_epoch += 1
        images_seen += views[0].shape[0] * get_world_size()
        if writer is not None and (step + 1) % log_freq == 0:
            scalars = dict(values, lr=lr, weight_decay=wd, momentum=momentum, temperature=temperature)
            for name, value in scalars.items():
                writer.add_scalar(f"train/{name}", value, step + 1)
        if progress is not None:
            progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            progress.update(1)
        if stop.step_done():
            break

    metrics = meter.averages(ctx.device)
    elapsed = time.perf_counter() - tic
    metrics.update(lr=lr if meter.count else 0.0, images_per_second=images_seen / max(elapsed, 1e-9))
    stopped = step_in_epoch < schedules.steps_per_epoch
    return EpochResult(metrics, step_in_epoch, stopped)


class JsonLog:
    """Append one JSON object per line to ``log.txt`` (rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if is_main_process():
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
