"""Linear probing and fine-tuning: the two recipes and the epoch loop they share.

Both train a classifier on top of pretrained weights and keep the model in timm's plain ViT layout (backbone
keys + ``head.*``), so their checkpoints load anywhere a ViT is expected, including ``--eval-only`` and
:func:`patchmix.weights.load_weights`.

* Linear probe (:func:`build_linear`): the backbone is frozen and stays in ``eval()``; its CLS features are
  computed under ``no_grad`` and only the head (optionally BatchNorm1d without affine, then Linear) is trained,
  with SGD + Nesterov momentum. Only the head is wrapped in DistributedDataParallel.
* Fine-tuning (:func:`build_finetune`): timm's recipe -- ``create_transform`` with RandAugment and
  RandomErasing, Mixup/CutMix with ``SoftTargetCrossEntropy``, AdamW over ``param_groups_layer_decay``
  groups, drop path, optional ``ModelEmaV3`` that is evaluated and saved.

The learning rate follows timm's ``CosineLRScheduler`` (per step, or per epoch like the official code), a pure
function of the step, so a resumed run continues exactly. Each epoch re-seeds every RNG from (seed, epoch,
rank), so resuming from an epoch boundary reproduces the uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, DistributedSampler

from patchmix.checkpoint import FORMAT_VERSION, LATEST_NAME, load_checkpoint, save_checkpoint
from patchmix.config import ClassifierConfig, ConfigError, FinetuneConfig, LinearConfig, config_to_dict
from patchmix.data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, num_classes
from patchmix.distributed import DistInfo, all_reduce_mean, barrier, progress_bar, wrap_ddp
from patchmix.evaluation import (build_splits, evaluate, input_size, load_pretrained, per_process_batch,
                                 prepare_run_dir, seed_everything, test_loader, write_results)
from patchmix.weights import LoadedWeights, build_model

__all__ = ["LINEAR_BASE_LR", "FINETUNE_BASE_LR", "Recipe", "build_linear", "build_finetune", "linear_transform",
           "finetune_transform", "run_classifier"]

# Official base learning rates per architecture (for a batch of 256).
LINEAR_BASE_LR = {"vit_tiny": 0.05, "vit_small": 0.02, "vit_base": 0.01}
FINETUNE_BASE_LR = {"vit_tiny": 1e-3, "vit_small": 5e-4, "vit_base": 5e-4}


@dataclass
class Recipe:
    """Everything the epoch loop needs; built by :func:`build_linear` or :func:`build_finetune`."""

    model: nn.Module                              # plain timm ViT with its classifier head (saved, evaluated)
    forward: Callable[[torch.Tensor], torch.Tensor]  # images -> logits, through the DDP-wrapped trained part
    train_mode: Callable[[], None]                # put the right modules in train mode
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    mixup: Any = None                             # timm Mixup (fine-tuning)
    ema: Any = None                               # timm ModelEmaV3 (fine-tuning, --model-ema)
    peak_lr: float = 0.0


def _base_lr(cfg: ClassifierConfig, arch: str, table: dict[str, float]) -> float:
    return cfg.base_lr or table.get(arch, table["vit_tiny"])


def _scheduler(cfg: ClassifierConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
               warmup_lr: float) -> Any:
    """timm cosine schedule with linear warm-up, in steps (default) or in epochs (``--lr-per-epoch``)."""
    from timm.scheduler import CosineLRScheduler
    per_epoch = cfg.lr_per_epoch
    scale = 1 if per_epoch else steps_per_epoch
    return CosineLRScheduler(optimizer, t_initial=max(1, round(cfg.epochs * scale)), lr_min=cfg.min_lr,
                             warmup_t=round(cfg.warmup_epochs * scale), warmup_lr_init=warmup_lr,
                             t_in_epochs=per_epoch)


# --------------------------------------------------------------------------------------------------------------
# Linear probe


def linear_transform(img_size: int, crop_min: float) -> Callable:
    """Official linear-probe augmentation: RandomResizedCrop(crop_min-1, bicubic) + flip + normalisation."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(crop_min, 1.0), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def linear_head(embed_dim: int, classes: int, batchnorm: bool, init_std: float) -> nn.Module:
    """Linear(D, classes), optionally after BatchNorm1d(affine=False) (MAE / MoCo v3 probe)."""
    linear = nn.Linear(embed_dim, classes)
    if init_std > 0:
        nn.init.normal_(linear.weight, std=init_std)
        nn.init.zeros_(linear.bias)
    if batchnorm:
        return nn.Sequential(nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6), linear)
    return linear


def build_linear(cfg: LinearConfig, loaded: LoadedWeights, classes: int, env: DistInfo) -> Recipe:
    """Frozen backbone + trainable head, SGD with Nesterov momentum (timm ``'sgd'``) and no weight decay."""
    from timm.optim import create_optimizer_v2
    model = build_model(loaded)
    model.head = linear_head(model.embed_dim, classes, cfg.batchnorm, cfg.head_init_std)
    model.num_classes = classes
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    model.to(env.device)
    head, trained_head = wrap_ddp(model.head, env.device)  # only the head has gradients to synchronise
    model.head = head

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # frozen features: no graph through the backbone
            features = model.forward_head(model.forward_features(images), pre_logits=True)
        return trained_head(features)

    def train_mode() -> None:
        model.eval()  # the backbone never leaves eval mode (MoCo v3 / official since e565a1d)
        model.head.train()  # BatchNorm of the optional probe BN uses batch statistics

    peak = _base_lr(cfg, loaded.backbone["arch"], LINEAR_BASE_LR) * cfg.batch_size / 256
    optimizer = create_optimizer_v2(model.head, opt="sgd", lr=peak, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    return Recipe(model, forward, train_mode, list(model.head.parameters()), optimizer, nn.CrossEntropyLoss(),
                  peak_lr=peak)


# --------------------------------------------------------------------------------------------------------------
# Fine-tuning


def _posterize_keeping_zero_bits(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, with 0 bits kept meaning a black image as in the Pillow of the official code.

    RandAugment's ``inc1`` posterize keeps ``4 - int(magnitude / 10 * 4)`` bits, i.e. 0 bits whenever the noisy
    magnitude (9 +- 0.5) reaches 10; recent Pillow raises ``ValueError`` on 0 bits instead of returning black.
    """
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return image if bits_to_keep >= 8 else ImageOps.posterize(image, bits_to_keep)


def finetune_transform(cfg: FinetuneConfig, img_size: int) -> Callable:
    """timm's training transform; with ``crop_padding`` its RandomResizedCrop becomes RandomCrop(padding)."""
    from timm.data import auto_augment, create_transform
    from torchvision import transforms
    transform = create_transform(
        input_size=img_size, is_training=True, scale=(cfg.crop_min, 1.0), color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment or None, interpolation="bicubic", re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if cfg.crop_padding:
        transform.transforms[0] = transforms.RandomCrop(img_size, padding=cfg.crop_padding)
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):  # RandAugment / AutoAugment operations
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize_keeping_zero_bits
    return transform


def build_finetune(cfg: FinetuneConfig, loaded: LoadedWeights, classes: int, env: DistInfo) -> Recipe:
    """All layers trained: AdamW over timm's layer-decay groups, Mixup/CutMix, label smoothing, optional EMA."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3
    model = build_model(loaded, drop_path_rate=cfg.drop_path)
    model.reset_classifier(classes)
    model.to(env.device)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    peak = _base_lr(cfg, loaded.backbone["arch"], FINETUNE_BASE_LR) * cfg.batch_size / 256
    # timm: no weight decay on 1-D tensors and model.no_weight_decay() (pos_embed, cls_token); layer-wise lr
    # scale 0.75 ** (depth + 1 - layer) in each group's "lr_scale", applied by the scheduler.
    optimizer = create_optimizer_v2(model, opt="adamw", lr=peak, weight_decay=cfg.weight_decay,
                                    layer_decay=cfg.layer_decay, eps=1e-8, betas=(0.9, 0.999))
    model, trained = wrap_ddp(model, env.device)
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    return Recipe(model, trained, model.train, [p for p in model.parameters() if p.requires_grad], optimizer,
                  criterion, mixup, ema, peak)


# --------------------------------------------------------------------------------------------------------------
# The run


def _train_epoch(recipe: Recipe, loader: DataLoader, scheduler: Any, scaler: torch.amp.GradScaler, epoch: int,
                 cfg: ClassifierConfig, env: DistInfo, dtype: torch.dtype | None, writer: Any,
                 progress: Any) -> dict[str, float]:
    steps = len(loader)
    recipe.train_mode()
    if cfg.lr_per_epoch:
        scheduler.step(epoch)
    total, count = 0.0, 0
    tic = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        global_step = epoch * steps + step
        if not cfg.lr_per_epoch:
            scheduler.step_update(global_step)
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if recipe.mixup is not None:
            images, targets = recipe.mixup(images, targets)
        with torch.autocast(env.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = recipe.forward(images)
        loss = recipe.criterion(logits.float(), targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}; lower --base-lr, set "
                                     f"--clip-grad, or use --amp bf16/none instead of fp16.")
        recipe.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad > 0:
            scaler.unscale_(recipe.optimizer)
            torch.nn.utils.clip_grad_norm_(recipe.trainable, cfg.clip_grad)
        scaler.step(recipe.optimizer)
        scaler.update()
        if recipe.ema is not None:
            recipe.ema.update(recipe.model, step=global_step + 1)
        total, count = total + loss.item(), count + 1
        lr = max(group["lr"] for group in recipe.optimizer.param_groups)
        if writer is not None and (global_step + 1) % cfg.log_freq == 0:
            writer.add_scalar("train/loss", loss.item(), global_step + 1)
            writer.add_scalar("train/lr", lr, global_step + 1)
        if progress is not None:
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
            progress.update(1)
    mean = all_reduce_mean(torch.tensor([total / max(count, 1)], device=env.device)).item()
    return {"train_loss": mean, "train_lr": max(g["lr"] for g in recipe.optimizer.param_groups),
            "epoch_seconds": time.perf_counter() - tic}


def _backbone_unchanged(model: nn.Module, reference: dict[str, torch.Tensor]) -> list[str]:
    """Names of backbone tensors that differ from the pretrained weights (MoCo v3's sanity check)."""
    state = model.state_dict()
    return [k for k, v in reference.items() if not torch.equal(state[k].cpu(), v.cpu())]


def _summary_line(name: str, last: dict, best: dict, epochs: int) -> str:
    return (f"{name}: top-1 {last['top1']:.2f} at the last epoch ({epochs}; headline) | best {best['top1']:.2f} "
            f"at epoch {best['epoch']} (chosen on the test set, as the official code reports)")


def run_classifier(cfg: ClassifierConfig, kind: str, env: DistInfo) -> dict[str, Any]:
    """Train (or, with ``eval_only``, just evaluate) a linear probe or a fine-tuned model; return the results.

    Writes ``config.json``, ``log.txt`` (one JSON line per epoch), ``checkpoint.pth`` (every epoch, atomic;
    re-running the command resumes from it), ``best.pth`` and ``results.json`` into the output directory.
    """
    from patchmix.engine import JsonLog, amp_dtype
    if kind not in ("linear", "finetune"):
        raise ValueError(kind)
    output_dir, resume_path = prepare_run_dir(cfg, env.is_main, resumable=not cfg.eval_only)
    loaded = load_pretrained(cfg, env)
    size = input_size(cfg, loaded)
    batch = per_process_batch(cfg, env.world_size)
    dtype = amp_dtype(cfg.amp, env.device)
    if kind == "linear":
        train_tf = linear_transform(size, cfg.crop_min)  # type: ignore[attr-defined]
    else:
        train_tf = finetune_transform(cfg, size)  # type: ignore[arg-type]
    train, test = build_splits(cfg, train_tf, eval_transform(size, cfg.crop_pct), env)
    classes = num_classes(train)
    tests = test_loader(test, batch, cfg.num_workers, env.device)
    name = "Linear probe" if kind == "linear" else "Fine-tuning"

    if cfg.eval_only:
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
            print(f"{name} weights evaluated on {cfg.dataset} ({metrics['images']} test images): top-1 "
                  f"{metrics['top1']:.2f}, top-5 {metrics['top5']:.2f}")
        return results

    if cfg.epochs < 1:
        raise ConfigError("epochs must be >= 1.")
    seed_everything(cfg.seed)  # the new head's initial weights
    builder = build_linear if kind == "linear" else build_finetune
    recipe = builder(cfg, loaded, classes, env)  # type: ignore[arg-type]
    sampler = DistributedSampler(train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(train, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=env.device.type == "cuda", drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f"the training set gives each process {len(sampler)} images, fewer than one batch of "
                          f"{batch}; lower --batch-size.")
    warmup_lr = getattr(cfg, "warmup_lr", 0.0)
    scheduler = _scheduler(cfg, recipe.optimizer, len(loader), warmup_lr)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)

    start_epoch, history = 0, []
    best: dict[str, Any] = {"top1": -1.0, "epoch": 0}
    best_ema: dict[str, Any] = {"top1": -1.0, "epoch": 0}
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        recipe.model.load_state_dict(state["model"])
        recipe.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if recipe.ema is not None and "model_ema" in state:
            recipe.ema.module.load_state_dict(state["model_ema"])
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
        best, best_ema = dict(state.get("best", best)), dict(state.get("best_ema", best_ema))
        if env.is_main:
            print(f"Resumed from {resume_path}: epoch {start_epoch} of {cfg.epochs}.")
    if env.is_main:
        trainable = sum(p.numel() for p in recipe.trainable)
        print(f"{name} on {cfg.dataset}: {len(train)} train / {len(test)} test images, {classes} classes, "
              f"{size} px | {len(loader)} steps/epoch x {cfg.epochs} epochs | batch {cfg.batch_size} ({batch} per "
              f"process x {env.world_size}) | peak lr {recipe.peak_lr:.3g} = base x {cfg.batch_size}/256 | "
              f"trainable {trainable / 1e6:.3g}M params | amp {dtype or 'off'} | preset {cfg.preset}")
        print(f"output {output_dir.resolve()}")

    writer = progress = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output_dir / "tensorboard"))
        progress = progress_bar(total=len(loader) * cfg.epochs, initial=len(loader) * start_epoch, desc=kind)
    log = JsonLog(output_dir / "log.txt")
    cfg_dict = config_to_dict(cfg)
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stop_after_epochs and epoch - start_epoch >= cfg.stop_after_epochs:
            if progress is not None:
                progress.close()
                writer.close()
            if env.is_main:
                print(f"Stopped after epoch {epoch} (stop_after_epochs={cfg.stop_after_epochs}); "
                      f"{output_dir / LATEST_NAME} is saved. Run the same command again to continue.")
            return {}
        seed_everything(cfg.seed + 1000 * epoch + env.rank)  # resumable: depends only on (seed, epoch, rank)
        sampler.set_epoch(epoch)
        record = {"epoch": epoch + 1, **_train_epoch(recipe, loader, scheduler, scaler, epoch, cfg, env, dtype,
                                                    writer, progress)}
        metrics = evaluate(recipe.model, tests, env.device, dtype)
        record.update({f"test_{k}": v for k, v in metrics.items()})  # test_images: evaluated exactly once each
        improved = metrics["top1"] > best["top1"]
        if improved:
            best = {"top1": metrics["top1"], "top5": metrics["top5"], "epoch": epoch + 1}
        if recipe.ema is not None:
            ema_metrics = evaluate(recipe.ema.module, tests, env.device, dtype)
            record.update({f"ema_test_{k}": v for k, v in ema_metrics.items() if k != "images"})
            if ema_metrics["top1"] > best_ema["top1"]:
                best_ema = {"top1": ema_metrics["top1"], "top5": ema_metrics["top5"], "epoch": epoch + 1}
        history.append(record)
        if env.is_main:
            state = {"format_version": FORMAT_VERSION, "kind": kind, "model": recipe.model.state_dict(),
                     "optimizer": recipe.optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                     "best": best, "best_ema": best_ema, "history": history, "num_classes": classes,
                     "backbone": dict(loaded.backbone), "pretrained": loaded.summary(), "config": cfg_dict}
            if recipe.ema is not None:
                state["model_ema"] = recipe.ema.module.state_dict()
            save_checkpoint(state, output_dir / LATEST_NAME)
            if improved:
                save_checkpoint({"format_version": FORMAT_VERSION, "kind": kind, "model": state["model"],
                                 "epoch": epoch + 1, "top1": metrics["top1"], "num_classes": classes,
                                 "backbone": state["backbone"], "config": cfg_dict}, output_dir / "best.pth")
            log.write(record)
            if writer is not None:
                for key in ("test_top1", "test_top5", "test_loss", "ema_test_top1"):
                    if key in record:
                        writer.add_scalar(key.replace("_", "/", 1), record[key], epoch + 1)
            progress.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}, lr "
                           f"{record['train_lr']:.3g}, test top-1 {metrics['top1']:.2f} (best {best['top1']:.2f} "
                           f"at epoch {best['epoch']})" + (f", EMA top-1 {record['ema_test_top1']:.2f}"
                                                           if "ema_test_top1" in record else ""))
        barrier()
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()

    last = history[-1]
    results: dict[str, Any] = {
        "protocol": kind, "dataset": cfg.dataset, "headline": "last epoch",
        "top1": last["test_top1"], "top5": last["test_top5"], "epochs": cfg.epochs,
        "best_top1": best["top1"], "best_epoch": best["epoch"],
        "note": "top1/top5: last epoch (headline); best_*: the best epoch on the test set (model selection on "
                "the test set, which is what the official code reports)",
        "train_images": len(train), "test_images": len(test), "weights": loaded.summary(), "preset": cfg.preset}
    if recipe.ema is not None:
        results.update(ema_top1=last["ema_test_top1"], ema_top5=last["ema_test_top5"],
                       ema_best_top1=best_ema["top1"], ema_best_epoch=best_ema["epoch"])
    if kind == "linear":
        changed = _backbone_unchanged(recipe.model, loaded.state_dict)
        if changed:
            raise RuntimeError(f"sanity check failed: the frozen backbone changed during the linear probe "
                               f"({', '.join(changed[:5])}); this is a bug, please report it.")
        results["backbone_unchanged"] = True
    if env.is_main:
        write_results(output_dir, results)
        print(_summary_line(name, {"top1": results["top1"]}, best, cfg.epochs))
        if recipe.ema is not None:
            print(_summary_line("  EMA weights", {"top1": results["ema_top1"]}, best_ema, cfg.epochs))
        if kind == "linear":
            print("sanity check passed: the backbone weights are unchanged")
        print(f"results: {output_dir / 'results.json'}")
    return results
