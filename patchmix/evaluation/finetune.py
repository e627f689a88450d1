"""Fine-tuning: every layer trained with the official timm recipe.

timm does the work: ``create_transform`` with RandAugment and RandomErasing, ``Mixup`` / CutMix with
``SoftTargetCrossEntropy``, AdamW over ``param_groups_layer_decay`` groups (through ``create_optimizer_v2``), drop
path, and an optional ``ModelEmaV3`` that is evaluated and saved (the official code updated an EMA but never
used it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torchvision import transforms

from patchmix.config import DATA, MODEL, OPTIM, configclass, option
from patchmix.data import IMAGENET_MEAN, IMAGENET_STD
from patchmix.distributed import wrap_ddp
from patchmix.evaluation.classifier import ClassifierConfig, ClassifierTask
from patchmix.weights import build_model

__all__ = ["FinetuneConfig", "Finetune", "finetune_transform"]

AUGMENT = "Augmentation"


@configclass
class FinetuneConfig(ClassifierConfig):
    """End-to-end fine-tuning with the official timm recipe (RandAugment, Mixup/CutMix, layer decay)."""

    output_dir: str = "output/finetune"
    base_lr: float = 5e-4  # the recipes set the official value of each architecture
    warmup_epochs: float = 10.0
    min_lr: float = 1e-5
    weight_decay: float = OPTIM(0.05, "AdamW weight decay (none on biases, norms, pos_embed and cls_token)",
                                at_least=0)
    warmup_lr: float = OPTIM(1e-6, "learning rate at the start of the warm-up", at_least=0)
    layer_decay: float = OPTIM(0.75, "layer-wise learning-rate decay (timm param_groups_layer_decay)", above=0,
                               at_most=1)
    drop_path: float = MODEL(0.1, "stochastic depth", at_least=0, at_most=1)
    model_ema: bool = MODEL(False, "keep an EMA of the weights (timm ModelEmaV3), evaluate and save it too")
    model_ema_decay: float = MODEL(0.99996, "EMA decay per step", at_least=0, at_most=1)

    crop_min: float = DATA(0.08, "smallest RandomResizedCrop area", above=0, at_most=1)
    crop_padding: int = DATA(0, "use RandomCrop(IMG_SIZE, padding=N) instead of RandomResizedCrop (official CIFAR "
                             "recipe: 4); 0 = RandomResizedCrop", at_least=0)
    auto_augment: str = option("rand-m9-mstd0.5-inc1", "timm RandAugment policy (empty = off)", group=AUGMENT)
    color_jitter: float = option(0.4, "colour jitter (ignored by timm when AUTO_AUGMENT is set)", group=AUGMENT,
                                 at_least=0)
    reprob: float = option(0.25, "RandomErasing probability", group=AUGMENT, at_least=0, at_most=1)
    remode: str = option("pixel", "RandomErasing fill mode", group=AUGMENT, choices=("const", "rand", "pixel"))
    recount: int = option(1, "RandomErasing count", group=AUGMENT, at_least=1)
    mixup: float = option(0.8, "Mixup alpha (0 = off)", group=AUGMENT, at_least=0)
    cutmix: float = option(1.0, "CutMix alpha (0 = off)", group=AUGMENT, at_least=0)
    mixup_prob: float = option(1.0, "probability of applying Mixup or CutMix to a batch", group=AUGMENT,
                               at_least=0, at_most=1)
    mixup_switch_prob: float = option(0.5, "probability of CutMix instead of Mixup when both are on",
                                      group=AUGMENT, at_least=0, at_most=1)
    mixup_mode: str = option("batch", "Mixup/CutMix parameters per batch, pair or element", group=AUGMENT,
                             choices=("batch", "pair", "elem"))
    smoothing: float = option(0.1, "label smoothing", group=AUGMENT, at_least=0, at_most=0.999)


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


class Finetune(ClassifierTask):
    """All layers trained: AdamW over timm's layer-decay groups, Mixup/CutMix, label smoothing, optional EMA."""

    kind, title = "finetune", "Fine-tuning"

    def build(self) -> None:
        cfg, env = self.cfg, self.env
        model = build_model(self.loaded, drop_path_rate=cfg.drop_path)
        model.reset_classifier(self.classes)
        model.to(env.device)
        self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        self.peak_lr = cfg.base_lr * cfg.batch_size / 256
        self.warmup_lr = cfg.warmup_lr
        # timm: no weight decay on 1-D tensors and model.no_weight_decay() (pos_embed, cls_token); layer-wise lr
        # scale 0.75 ** (depth + 1 - layer) in each group's "lr_scale", applied by the scheduler.
        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=self.peak_lr, weight_decay=cfg.weight_decay,
                                             layer_decay=cfg.layer_decay, eps=1e-8, betas=(0.9, 0.999))
        self.model, self.forward = wrap_ddp(model, env.device)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                               num_classes=self.classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    @staticmethod
    def train_transform(cfg: FinetuneConfig, img_size: int) -> Callable:
        return finetune_transform(cfg, img_size)
