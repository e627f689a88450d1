"""Pretraining with any method: the method as a :class:`~patchmix.engine.TrainTask`, the run, the kNN report.

:func:`run_pretraining` is everything ``main_pretrain.py`` does: check the config, prepare the output directory,
build the loader (the method's views, seeded per image), the method, its optimiser and schedules, resume if a
checkpoint exists, train with the engine, and (``--knn-eval``) compare the kNN accuracy of the learned features
with that of the same encoder at its random initialisation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from patchmix.config import ConfigError, config_to_dict
from patchmix.data import build_dataset, fixed_subset, resumable_loader, seed_everything
from patchmix.distributed import DistInfo, barrier, batch_per_process, wrap_ddp
from patchmix.engine import LoopSettings, Position, StepOutput, Timer, Trainer, TrainTask, amp_dtype, no_timer
from patchmix.knn import extract_features, knn_splits, weighted_knn
from patchmix.methods import PretrainConfig, PretrainMethod, get_method
from patchmix.models import cls_features
from patchmix.rundir import prepare_run_dir, run_header
from patchmix.runlog import publish_results
from patchmix.schedules import StepValues

__all__ = ["PretrainTask", "run_pretraining", "build_method", "knn_report"]


class PretrainTask(TrainTask):
    """A pretraining method seen by the engine: AdamW over the method's groups, its schedules, its step."""

    def __init__(self, method: PretrainMethod, trained: torch.nn.Module, cfg: PretrainConfig,
                 steps_per_epoch: int) -> None:
        self.model = method  # saved: the official key layout
        self.trained = trained  # called: DistributedDataParallel(method) or the method itself
        self.optimizer = torch.optim.AdamW(method.param_groups(cfg.weight_decay), lr=0.0, betas=(0.9, 0.999),
                                           eps=1e-8)
        self.schedules = method.build_schedules(cfg, steps_per_epoch)

    def schedule(self, step: int) -> StepValues:
        values = self.schedules.at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = values.lr
            if group.get("apply_weight_decay"):
                group["weight_decay"] = values.weight_decay
        return values

    def substeps(self, batch: Any) -> list[Any]:
        views, labels = batch
        return [(part, labels) for part in self.model.substeps(views)]

    def before_step(self, values: StepValues) -> None:
        self.model.update_teacher(values)

    def after_backward(self, values: StepValues) -> None:
        self.model.after_backward(values)

    def after_step(self, step: int, values: StepValues) -> None:
        self.model.after_step(values)

    def clip_gradients(self, max_norm: float) -> float:
        return self.model.clip_gradients(max_norm)

    def loss(self, batch: Any, values: StepValues, timer: Timer = no_timer) -> StepOutput:
        views, _labels = batch
        return self.trained(views, values, timer=timer)

    def generators(self) -> dict[str, torch.Generator]:
        return self.model.generators()


def run_pretraining(cfg: PretrainConfig, env: DistInfo) -> dict[str, Any]:
    """Train ``cfg.method`` as configured (resuming from the output directory); return the kNN report, if any."""
    method_cls = get_method(cfg.method)
    batch = batch_per_process(cfg.batch_size, env.world_size)
    method_cls.check_config(cfg, batch)
    output_dir, resume_path = prepare_run_dir(cfg, env.is_main)

    if env.is_main and cfg.download:
        build_dataset(cfg.dataset, cfg.data_path, train=True, download=True)
    barrier()
    dataset = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, train=True), cfg.train_subset)
    loader, sampler = resumable_loader(dataset, method_cls.train_transform(cfg), cfg.seed, batch, env.rank,
                                       env.world_size, cfg.num_workers, env.device.type == "cuda")
    steps_per_batch = method_cls.steps_per_batch(cfg)
    steps_per_epoch = len(sampler) // batch * steps_per_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"the training set gives each process {len(sampler)} images, fewer than one batch of "
                          f"{batch}; lower --batch-size or use more data.")
    method = build_method(cfg, env)
    if cfg.compile:
        method.compile_backbones()
    method, trained = wrap_ddp(method, env.device)
    task = PretrainTask(method, trained, cfg, steps_per_epoch)
    dtype = amp_dtype(cfg.amp, env.device)
    settings = LoopSettings(cfg.epochs, steps_per_epoch, batch, cfg.log_freq, cfg.clip_grad, dtype,
                            cfg.stop_after_steps, cfg.save_freq, name="pretrain", steps_per_batch=steps_per_batch,
                            wandb_project=cfg.wandb)
    trainer = Trainer(task, loader, sampler, settings, env, output_dir,
                      {"backbone": method.backbone_kwargs(cfg), "method": cfg.method, "config": config_to_dict(cfg)})
    start = trainer.restore(resume_path) if resume_path else Position()
    if env.is_main:
        print_header(cfg, env, method, batch, steps_per_epoch, task.schedules.peak_lr, dtype, output_dir)
    if trainer.fit(start) and cfg.knn_eval:
        return knn_report(cfg, method, env, output_dir)
    return {}


def build_method(cfg: PretrainConfig, env: DistInfo) -> PretrainMethod:
    """The method with the same initial weights on every process, then each process's own random stream.

    The weights come from ``seed`` alone; afterwards torch, numpy and ``random`` are seeded with ``seed + rank``
    (as in MAE), so that drop-path masks and any other draw of the training step differ across processes instead
    of repeating the same pattern on every GPU. The augmentations do not use this stream: each image's is a pure
    function of ``(seed, epoch, index)`` (:class:`patchmix.data.SeededTransformDataset`), and a resumed run puts
    back every process's saved stream.
    """
    seed_everything(cfg.seed)
    method = get_method(cfg.method).from_config(cfg).to(env.device)
    seed_everything(cfg.seed + env.rank)
    return method


def print_header(cfg: PretrainConfig, env: DistInfo, method: PretrainMethod, batch: int, steps_per_epoch: int,
                 peak_lr: float, dtype: torch.dtype | None, output_dir: Path) -> None:
    encoder = method.feature_encoder()
    backbone = sum(p.numel() for n, p in encoder.named_parameters() if not n.startswith("head"))
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    print(run_header(cfg, env))
    print(f"amp {dtype or 'off'} | preset {cfg.preset} | method {method.describe(cfg)}")
    print(f"data {cfg.dataset}: {steps_per_epoch} steps/epoch x {cfg.epochs} epochs | batch {cfg.batch_size} "
          f"({batch} per process) | peak lr {peak_lr:.3g} = {cfg.base_lr:g} x {cfg.batch_size}/256")
    print(f"model {cfg.arch}/{cfg.patch_size} at {cfg.img_size}px: backbone {backbone / 1e6:.2f}M params, "
          f"trainable {trainable / 1e6:.2f}M")
    print(f"output {output_dir.resolve()}")


def knn_report(cfg: PretrainConfig, method: PretrainMethod, env: DistInfo, output_dir: Path) -> dict[str, Any]:
    """Weighted-kNN (k=20, T=0.07) top-1 of the learned feature encoder and of the same encoder at random init,
    measured by the project's one kNN harness (the numbers ``main_knn.py`` gives for the same split)."""
    splits = knn_splits(cfg.dataset, cfg.data_path, cfg.img_size, 0.0, cfg.knn_train_subset, cfg.knn_test_subset)

    def accuracy(encoder: torch.nn.Module) -> float:
        encode = cls_features(encoder.eval())
        bank, bank_labels = extract_features(encode, splits.train, 256, env.device, cfg.num_workers)
        queries, labels = extract_features(encode, splits.test, 256, env.device, cfg.num_workers)
        return weighted_knn(bank, bank_labels, queries, labels, splits.num_classes, ks=(20,))[20]["top1"]

    learned = accuracy(method.feature_encoder())
    torch.manual_seed(cfg.seed)  # the same initial weights as the trained model had
    baseline = accuracy(get_method(cfg.method).from_config(cfg).to(env.device).feature_encoder())
    report = {"k": 20, "temperature": 0.07, "train_images": len(splits.train), "test_images": len(splits.test),
              "learned_top1": learned, "random_init_top1": baseline}
    if env.is_main:
        (output_dir / "knn.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nWeighted kNN (k=20) on {cfg.dataset}, {len(splits.train)} bank / {len(splits.test)} test images:")
        print(f"  learned features:     top-1 {learned:.2f}%")
        print(f"  random-init features: top-1 {baseline:.2f}%")
    publish_results(cfg, output_dir, {"knn": report}, env.is_main, "pretrain")
    return report
