"""Set-up and reporting helpers of ``main_pretrain.py``: config checks, output directory and resume, kNN report."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from patchmix.checkpoint import (FORMAT_VERSION, CheckpointError, capture_rng, load_checkpoint, prepare_run_dir, restore_rng,
                                 save_checkpoint)
from patchmix.config import ConfigError, PretrainConfig, config_to_dict
from patchmix.data import (PatchMixTransform, ResumableDistributedSampler, SeededTransformDataset, build_dataset,
                           eval_transform, fixed_subset, num_classes)
from patchmix.distributed import DistInfo, barrier
from patchmix.knn import extract_features, weighted_knn
from patchmix.loss import LossWeights, PatchMixLoss
from patchmix.models import PatchMixModel, arch_spec, cls_features
from patchmix.schedules import Schedules

__all__ = ["backbone_kwargs", "check_pretrain_config", "prepare_output_dir", "steps_per_epoch",
           "print_run_header", "keep_numbered_copy", "knn_report", "RUN_ONLY_KEYS", "build_loader", "build_model",
           "build_criterion", "build_schedules", "TrainingState"]

# Settings that may change between a run and its resumption without changing what is trained.
RUN_ONLY_KEYS = ("output_dir", "resume", "allow_config_change", "device", "num_workers", "log_freq", "save_freq",
                 "stop_after_steps", "dist_timeout_minutes", "knn_eval", "knn_train_subset", "knn_test_subset",
                 "compile", "data_path", "download")


def backbone_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """What :func:`patchmix.models.build_backbone` needs to rebuild this run's ViT (stored in checkpoints)."""
    spec = arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)
    return {"arch": cfg.arch, "img_size": cfg.img_size, "patch_size": cfg.patch_size,
            "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads}


def check_pretrain_config(cfg: PretrainConfig, world_size: int) -> int:
    """Fail early, with the fix, on settings that cannot work; return the batch per process."""
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}.")
    per_process = cfg.batch_size // world_size
    if cfg.num_mix < 1:
        raise ConfigError(f"num_mix must be >= 1 (1 = no mixing), got {cfg.num_mix}.")
    if cfg.num_mix > 1 and per_process < 2 * cfg.num_mix - 1:
        raise ConfigError(f"the batch per process ({cfg.batch_size} / {world_size} = {per_process}) is smaller "
                          f"than 2*num_mix-1 = {2 * cfg.num_mix - 1}; raise --batch-size or lower --num-mix.")
    for name, size in (("img_size", cfg.img_size), ("local_crop_size", cfg.local_crop_size)):
        if (name == "img_size" or cfg.local_crops_number) and size % cfg.patch_size:
            raise ConfigError(f"{name} {size} is not divisible by patch_size {cfg.patch_size}; choose a multiple "
                              f"of {cfg.patch_size}.")
    if cfg.epochs < 1:
        raise ConfigError("epochs must be >= 1.")
    arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)
    return per_process


def build_loader(cfg: PretrainConfig, env: DistInfo, per_process_batch: int
                 ) -> tuple[torch.utils.data.DataLoader, ResumableDistributedSampler]:
    """Training loader; the augmentation of every image depends only on (seed, epoch, index)."""
    if env.is_main and cfg.download:
        build_dataset(cfg.dataset, cfg.data_path, train=True, download=True)
    barrier()
    dataset = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, train=True), cfg.train_subset)
    transform = PatchMixTransform(cfg.img_size, cfg.crop_min, cfg.blur_probs, cfg.solarize_probs,
                                  cfg.local_crops_number, cfg.local_crop_size, cfg.local_crop_scale,
                                  cfg.color_jitter)
    train_set = SeededTransformDataset(dataset, transform, cfg.seed)
    sampler = ResumableDistributedSampler(train_set, env.world_size, env.rank, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=per_process_batch, sampler=sampler, num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda", drop_last=True, persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator())  # own generator: creating an iterator must not consume the global RNG
    return loader, sampler


def build_model(cfg: PretrainConfig) -> PatchMixModel:
    return PatchMixModel(backbone_kwargs(cfg), cfg.drop_path, cfg.proj_layers, cfg.pred_layers, cfg.hidden_dim,
                         cfg.out_dim, cfg.use_momentum, cfg.fuse_backbone)


def build_criterion(cfg: PretrainConfig) -> PatchMixLoss:
    weights = LossWeights(cfg.o2o_weight, cfg.m2o_weight, cfg.m2m_weight, cfg.local_o2o_weight,
                          cfg.local_m2o_weight)
    return PatchMixLoss(weights, cfg.o2o_smoothing, cfg.mix_smoothing)


def build_schedules(cfg: PretrainConfig, iterations: int) -> Schedules:
    return Schedules(iterations, cfg.epochs, cfg.base_lr * cfg.batch_size / 256, cfg.min_lr, cfg.warmup_epochs,
                     cfg.weight_decay, cfg.weight_decay_end, cfg.momentum, cfg.momentum_per_epoch,
                     cfg.temperature, cfg.warmup_temperature, cfg.warmup_temperature_epochs)


class TrainingState:
    """What a checkpoint saves and a resume restores: model, optimiser, grad scaler, position, RNG.

    The random state of every process is saved (a list indexed by rank), so a resumed run draws exactly the
    drop-path masks and mixing partitions the interrupted one would have drawn.
    """

    def __init__(self, cfg: PretrainConfig, env: DistInfo, model: PatchMixModel, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, generators: dict[str, torch.Generator], iterations: int) -> None:
        self.cfg, self.env, self.model, self.optimizer, self.scaler = cfg, env, model, optimizer, scaler
        self.generators, self.iterations = generators, iterations
        self.config_dict = config_to_dict(cfg)

    def save(self, path: Path, epoch: int, step_in_epoch: int) -> Path:
        """Collective: every process contributes its RNG state; rank 0 writes the file atomically."""
        rng = [capture_rng(self.generators)]
        if self.env.world_size > 1:
            gathered: list = [None] * self.env.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.env.is_main:
            save_checkpoint({"format_version": FORMAT_VERSION, "model": self.model.state_dict(),
                             "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                             "epoch": epoch, "step_in_epoch": step_in_epoch,
                             "global_step": epoch * self.iterations + step_in_epoch, "rng": rng,
                             "backbone": backbone_kwargs(self.cfg), "config": self.config_dict}, path)
        barrier()
        return path

    def restore(self, path: Path) -> tuple[int, int]:
        """Load ``path``; return ``(epoch, step_in_epoch)`` to continue from."""
        state = load_checkpoint(path)
        if "model" not in state or "optimizer" not in state:
            raise CheckpointError(f"{path} is not a resumable checkpoint of this code (it has {sorted(state)[:6]}). "
                                  f"To start from other weights, train a new run; --resume only continues runs "
                                  f"written by main_pretrain.py.")
        if int(state.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer version of this code (format "
                                  f"{state['format_version']} > {FORMAT_VERSION}); update the code.")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            saved = state.get("config", {})
            settings = {k: saved.get(k) for k in ("use_momentum", "hidden_dim", "out_dim", "proj_layers",
                                                  "pred_layers") if k in saved}
            raise ConfigError(f"checkpoint {path} does not fit this model ({str(error).splitlines()[0]}...). "
                              f"It was saved with backbone {state.get('backbone')} and {settings}; use matching "
                              f"--arch / --patch-size / --img-size / head settings, or another --output-dir."
                              ) from error
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if self.env.rank < len(rng):  # a different number of processes: exactness is lost anyway
            restore_rng(rng[self.env.rank], self.generators)
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if self.env.is_main:
            print(f"Resumed from {path}: epoch {epoch}, step {step} of {self.iterations}.")
        return epoch, step


def steps_per_epoch(samples_per_process: int, per_process_batch: int, cfg: PretrainConfig) -> int:
    steps = samples_per_process // per_process_batch
    if steps == 0:
        raise ConfigError(f"the training set gives each process {samples_per_process} images, fewer than one "
                          f"batch of {per_process_batch}; lower --batch-size or use more data.")
    return steps


def prepare_output_dir(cfg: PretrainConfig, is_main: bool) -> tuple[Path, Path | None]:
    """Output directory, checkpoint to resume from, saved config (see :func:`patchmix.checkpoint.prepare_run_dir`)."""
    return prepare_run_dir(cfg, is_main, RUN_ONLY_KEYS)


def _git_revision() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_run_header(cfg: PretrainConfig, env: DistInfo, per_process_batch: int, iterations: int, schedules: Any,
                     model: PatchMixModel, dtype: torch.dtype | None) -> None:
    if not env.is_main:
        return
    import timm
    online = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("momentum_encoder"))
    backbone = sum(p.numel() for n, p in model.base_encoder.named_parameters() if not n.startswith("head"))
    print(f"patchmix {_git_revision()} | torch {torch.__version__} | timm {timm.__version__} | "
          f"python {platform.python_version()}")
    print(f"device {env.device} x {env.world_size} process(es) | amp {dtype or 'off'} | preset {cfg.preset}")
    print(f"data {cfg.dataset}: {iterations} steps/epoch x {cfg.epochs} epochs | batch {cfg.batch_size} "
          f"({per_process_batch} per process) | peak lr {schedules.peak_lr:.3g} = {cfg.base_lr:g} x "
          f"{cfg.batch_size}/256")
    print(f"model {cfg.arch}/{cfg.patch_size} at {cfg.img_size}px: backbone {backbone / 1e6:.2f}M params, "
          f"trainable {online / 1e6:.2f}M | m={cfg.num_mix} | momentum encoder: {cfg.use_momentum}")
    print(f"output {Path(cfg.output_dir).resolve()}")


def keep_numbered_copy(latest: Path, epoch: int, save_freq: int, epochs: int) -> None:
    """Hard-link ``checkpoint.pth`` as ``checkpoint_EEEE.pth`` every ``save_freq`` epochs and at the end.

    A hard link costs no disk; the next atomic save replaces ``checkpoint.pth`` by a new file and leaves the
    linked one intact. Falls back to a copy on file systems without hard links.
    """
    if not (save_freq > 0 and epoch % save_freq == 0) and epoch != epochs:
        return
    numbered = latest.with_name(f"checkpoint_{epoch:04d}.pth")
    if numbered.exists():
        numbered.unlink()
    try:
        os.link(latest, numbered)
    except OSError:
        shutil.copy2(latest, numbered)


def knn_report(cfg: PretrainConfig, model: PatchMixModel, env: DistInfo, output_dir: Path) -> dict[str, Any]:
    """Weighted-kNN (k=20, T=0.07) top-1 of the learned key encoder and of the same encoder at random init."""
    crop_pct = 0.875 if cfg.dataset in ("imagenet", "folder") else 1.0
    transform = eval_transform(cfg.img_size, crop_pct)
    train = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, True, transform), cfg.knn_train_subset)
    test = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, False, transform), cfg.knn_test_subset)
    classes = num_classes(train)

    def accuracy(encoder: torch.nn.Module) -> dict:
        encode = cls_features(encoder.eval())
        bank, bank_labels = extract_features(encode, train, 256, env.device, cfg.num_workers)
        queries, labels = extract_features(encode, test, 256, env.device, cfg.num_workers)
        return weighted_knn(bank, bank_labels, queries, labels, classes, ks=(20,))[20]

    learned = accuracy(model.key_encoder)
    torch.manual_seed(cfg.seed)  # the same initial weights as the trained model had
    random_model = build_model(cfg).to(env.device)
    baseline = accuracy(random_model.key_encoder)
    report = {"k": 20, "temperature": 0.07, "train_images": len(train), "test_images": len(test),
              "learned_top1": learned["top1"], "random_init_top1": baseline["top1"]}
    if env.is_main:
        (output_dir / "knn.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nWeighted kNN (k=20) on {cfg.dataset}, {len(train)} bank / {len(test)} test images:")
        print(f"  learned features:     top-1 {learned['top1']:.2f}%")
        print(f"  random-init features: top-1 {baseline['top1']:.2f}%")
    return report
