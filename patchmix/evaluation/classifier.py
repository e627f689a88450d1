"""What the linear probe and fine-tuning share: a classifier trained on pretrained weights by the engine.

Both keep the model in timm's plain ViT layout (backbone keys + ``head.*``), so their checkpoints load anywhere
a ViT is expected, including ``--eval-only`` and :func:`patchmix.weights.load_weights`. Both train with the
engine of pretraining (:class:`patchmix.engine.Trainer`): pre-emption saves the exact mid-epoch position, a
non-finite loss stops every process at the same step, checkpoints are atomic, and a re-run resumes bit-exactly.
After every epoch the test set is evaluated; ``results.json`` reports the last epoch as the headline and the best
epoch next to it (the official code reports the best, i.e. selects the model on the test set).

The learning rate follows timm's ``CosineLRScheduler`` (per step, or per epoch like the official code), a pure
function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from patchmix.checkpoint import FORMAT_VERSION, save_checkpoint
from patchmix.config import OPTIM, RUN, ConfigError, EvalConfig, TrainConfig, config_to_dict, configclass
from patchmix.data import (
    build_splits,
    eval_transform,
    num_classes,
    resumable_loader,
    seed_everything,
    standard_crop_pct,
)
from patchmix.distributed import DistInfo, batch_per_process
from patchmix.engine import LoopSettings, Position, StepOutput, Timer, Trainer, TrainTask, amp_dtype, no_timer
from patchmix.evaluation.common import evaluate, input_size, load_pretrained, test_loader
from patchmix.rundir import prepare_run_dir, run_header, write_results
from patchmix.runlog import publish_results
from patchmix.schedules import StepValues
from patchmix.weights import LoadedWeights, build_model

__all__ = ["ClassifierConfig", "ClassifierTask", "run_classifier", "seed_everything"]


@configclass
class ClassifierConfig(TrainConfig, EvalConfig):
    """Shared by the linear probe and fine-tuning: a classifier trained on top of pretrained weights."""

    eval_only: bool = RUN(False, "only evaluate: the weights must hold a classifier head (a linear / fine-tuning "
                          "checkpoint, ours or official)", run_only=True)
    lr_per_epoch: bool = OPTIM(False, "change the learning rate once per epoch like the official code (default: "
                               "every step)")
    log_freq: int = 20


class ClassifierTask(TrainTask):
    """A classifier on pretrained weights: the engine's view of the linear probe and of fine-tuning.

    Subclasses implement :meth:`build`, which sets ``model`` (the whole timm ViT with its head: saved and
    evaluated), ``forward`` (images -> logits through the DDP-wrapped trained part), ``optimizer``,
    ``criterion``, ``peak_lr`` and optionally ``mixup`` and ``ema``; and :meth:`train_transform`.
    """

    kind: str = ""  # "linear" / "finetune"
    title: str = ""  # "Linear probe" / "Fine-tuning"
    forward: Callable[[torch.Tensor], torch.Tensor]
    criterion: nn.Module
    mixup: Any = None
    ema: Any = None
    peak_lr: float = 0.0
    warmup_lr: float = 0.0

    def __init__(self, cfg: ClassifierConfig, loaded: LoadedWeights, classes: int, env: DistInfo,
                 steps_per_epoch: int, tests: Any, output_dir: Path) -> None:
        self.cfg, self.loaded, self.classes, self.env, self.output_dir = cfg, loaded, classes, env, output_dir
        self.steps_per_epoch, self.tests = steps_per_epoch, tests
        self.autocast = amp_dtype(cfg.amp, env.device)
        self.build()
        scale = 1 if cfg.lr_per_epoch else steps_per_epoch
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=max(1, round(cfg.epochs * scale)),
                                           lr_min=cfg.min_lr, warmup_t=round(cfg.warmup_epochs * scale),
                                           warmup_lr_init=self.warmup_lr, t_in_epochs=cfg.lr_per_epoch)
        self.best: dict[str, Any] = {"top1": -1.0, "epoch": 0}
        self.best_ema: dict[str, Any] = {"top1": -1.0, "epoch": 0}
        self.history: list[dict[str, Any]] = []

    @abstractmethod
    def build(self) -> None:
        """Set ``model``, ``forward``, ``optimizer``, ``criterion``, ``peak_lr`` (and ``mixup``, ``ema``)."""

    @staticmethod
    @abstractmethod
    def train_transform(cfg: Any, img_size: int) -> Callable:
        """The training augmentation of one image."""

    def finish(self, results: dict[str, Any]) -> None:
        """Checks after the last epoch; may add entries to ``results``."""

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- the engine's hooks -------------------------------------------------------------------------------------

    def schedule(self, step: int) -> StepValues:
        if self.cfg.lr_per_epoch:
            self.scheduler.step(step // self.steps_per_epoch)
        else:
            self.scheduler.step_update(step)
        return StepValues(max(group["lr"] for group in self.optimizer.param_groups), self.cfg.weight_decay)

    def loss(self, batch: Any, values: StepValues, timer: Timer = no_timer) -> StepOutput:
        images, targets = batch
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        logits = self.forward(images)
        with torch.autocast(logits.device.type, enabled=False):
            return StepOutput(self.criterion(logits.float(), targets), {})

    def after_step(self, step: int, values: StepValues) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=step + 1)

    def clip_parameters(self) -> list[nn.Parameter]:
        return self.trainable

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        metrics = evaluate(self.model, self.tests, self.env.device, self.autocast)
        record.update({f"test_{k}": v for k, v in metrics.items()})  # test_images: evaluated exactly once each
        improved = metrics["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": metrics["top1"], "top5": metrics["top5"], "epoch": epoch + 1}
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.tests, self.env.device, self.autocast)
            record.update({f"ema_test_{k}": v for k, v in ema.items() if k != "images"})
            if ema["top1"] > self.best_ema["top1"]:
                self.best_ema = {"top1": ema["top1"], "top5": ema["top5"], "epoch": epoch + 1}
        self.history.append(dict(record))
        if improved and self.env.is_main:
            weights = self.model.state_dict()  # also under state_dict, the official key (stored once)
            save_checkpoint({"format_version": FORMAT_VERSION, "kind": self.kind, "model": weights,
                             "state_dict": weights, "epoch": epoch + 1, "top1": metrics["top1"],
                             "num_classes": self.classes, "backbone": dict(self.loaded.backbone),
                             "config": config_to_dict(self.cfg)},
                            self.output_dir / "best.pth")

    def epoch_line(self, record: dict[str, Any], epochs: int) -> str:
        line = (f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, lr {record['train_lr']:.3g}, "
                f"test top-1 {record['test_top1']:.2f} (best {self.best['top1']:.2f} at epoch {self.best['epoch']})")
        return line + (f", EMA top-1 {record['ema_test_top1']:.2f}" if "ema_test_top1" in record else "")

    def extra_state(self) -> dict[str, Any]:
        state = {"kind": self.kind, "best": self.best, "best_ema": self.best_ema, "history": self.history,
                 "num_classes": self.classes, "backbone": dict(self.loaded.backbone),
                 "pretrained": self.loaded.summary()}
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.ema is not None and "model_ema" in state:
            self.ema.module.load_state_dict(state["model_ema"])
        self.history = list(state.get("history", []))
        self.best = dict(state.get("best", self.best))
        self.best_ema = dict(state.get("best_ema", self.best_ema))

    # -- results ----------------------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """The run's ``results.json`` (subclasses add their checks)."""
        last = self.history[-1]
        results = {"protocol": self.kind, "dataset": self.cfg.dataset, "headline": "last epoch",
                   "top1": last["test_top1"], "top5": last["test_top5"], "epochs": self.cfg.epochs,
                   "best_top1": self.best["top1"], "best_epoch": self.best["epoch"],
                   "note": "top1/top5: last epoch (headline); best_*: the best epoch on the test set (model "
                           "selection on the test set, which is what the official code reports)",
                   "test_images": last["test_images"], "weights": self.loaded.summary(), "preset": self.cfg.preset}
        if self.ema is not None:
            results.update(ema_top1=last["ema_test_top1"], ema_top5=last["ema_test_top5"],
                           ema_best_top1=self.best_ema["top1"], ema_best_epoch=self.best_ema["epoch"])
        return results

    def summary_lines(self, results: dict[str, Any]) -> list[str]:
        lines = [_summary_line(self.title, results["top1"], self.best, self.cfg.epochs)]
        if self.ema is not None:
            lines.append(_summary_line("  EMA weights", results["ema_top1"], self.best_ema, self.cfg.epochs))
        return lines


def _summary_line(name: str, last: float, best: dict, epochs: int) -> str:
    return (f"{name}: top-1 {last:.2f} at the last epoch ({epochs}; headline) | best {best['top1']:.2f} at epoch "
            f"{best['epoch']} (chosen on the test set, as the official code reports)")


def run_classifier(cfg: ClassifierConfig, env: DistInfo, task_class: type[ClassifierTask]) -> dict[str, Any]:
    """Train (or, with ``eval_only``, just evaluate) a classifier; write and return ``results.json``."""
    output_dir, resume_path = prepare_run_dir(cfg, env.is_main, resumable=not cfg.eval_only)
    if env.is_main:
        print(run_header(cfg, env))
    loaded = load_pretrained(cfg, env)
    size = input_size(cfg, loaded)
    batch = batch_per_process(cfg.batch_size, env.world_size)
    dtype = amp_dtype(cfg.amp, env.device)
    test_tf = eval_transform(size, cfg.crop_pct or standard_crop_pct(cfg.dataset))
    train, test = build_splits(cfg.dataset, cfg.data_path, None, test_tf, cfg.train_subset, cfg.test_subset,
                               cfg.download)
    classes = num_classes(train)
    tests = test_loader(test, batch, cfg.num_workers, env.device)
    if cfg.eval_only:
        return _evaluate_only(cfg, env, task_class.kind, loaded, classes, tests, dtype, output_dir)

    loader, sampler = resumable_loader(train, task_class.train_transform(cfg, size), cfg.seed, batch, env.rank,
                                       env.world_size, cfg.num_workers, env.device.type == "cuda")
    steps_per_epoch = len(sampler) // batch
    if steps_per_epoch == 0:
        raise ConfigError(f"the training set gives each process {len(sampler)} images, fewer than one batch of "
                          f"{batch}; lower --batch-size.")
    seed_everything(cfg.seed)  # the new head: the same initial weights on every process
    task = task_class(cfg, loaded, classes, env, steps_per_epoch, tests, output_dir)
    seed_everything(cfg.seed + env.rank)  # the training stream (drop path, Mixup) differs across processes
    settings = LoopSettings(cfg.epochs, steps_per_epoch, batch, cfg.log_freq, cfg.clip_grad, dtype,
                            cfg.stop_after_steps, name=task.kind, wandb_project=cfg.wandb)
    trainer = Trainer(task, loader, sampler, settings, env, output_dir, {"config": config_to_dict(cfg)})
    start = trainer.restore(resume_path) if resume_path else Position()
    if env.is_main:
        trainable = sum(p.numel() for p in task.trainable)
        print(f"{task.title} on {cfg.dataset}: {len(train)} train / {len(test)} test images, {classes} classes, "
              f"{size} px | {steps_per_epoch} steps/epoch x {cfg.epochs} epochs | batch {cfg.batch_size} ({batch} "
              f"per process x {env.world_size}) | peak lr {task.peak_lr:.3g} = {cfg.base_lr:g} x "
              f"{cfg.batch_size}/256 | trainable {trainable / 1e6:.3g}M params | amp {dtype or 'off'} | preset "
              f"{cfg.preset}")
        print(f"output {output_dir.resolve()}")
    if not trainer.fit(start):
        return {}
    results = task.results()
    results["train_images"] = len(train)
    task.finish(results)
    if env.is_main:
        write_results(output_dir, results)
        for line in task.summary_lines(results):
            print(line)
        print(f"results: {output_dir / 'results.json'}")
    publish_results(cfg, output_dir, results, env.is_main, task.kind)
    return results


def _evaluate_only(cfg: ClassifierConfig, env: DistInfo, kind: str, loaded: LoadedWeights, classes: int,
                   tests: Any, dtype: torch.dtype | None, output_dir: Path) -> dict[str, Any]:
    model = build_model(loaded, with_head=True).to(env.device)
    if loaded.num_classes != classes:
        raise ConfigError(f"the classifier in {cfg.pretrained_weights} has {loaded.num_classes} classes, "
                          f"{cfg.dataset} has {classes}; evaluate it on the dataset it was trained for.")
    metrics = evaluate(model, tests, env.device, dtype)
    results = {"protocol": kind, "mode": "eval_only", "dataset": cfg.dataset, "top1": metrics["top1"],
               "top5": metrics["top5"], "test_images": metrics["images"], "weights": loaded.summary(),
               "preset": cfg.preset}
    if env.is_main:
        write_results(output_dir, results)
        print(f"weights evaluated on {cfg.dataset} ({metrics['images']} test images): top-1 {metrics['top1']:.2f}, "
              f"top-5 {metrics['top5']:.2f}")
    publish_results(cfg, output_dir, results, env.is_main, kind)
    return results
