"""The linear probe: a linear classifier on the frozen CLS token (the official protocol by default).

The backbone is frozen and stays in ``eval()``; its CLS features are computed under ``no_grad`` and only the
head (optionally BatchNorm1d without affine, then Linear) is trained, with SGD + Nesterov momentum (timm's
``'sgd'``, as the official code). Only the head is wrapped in DistributedDataParallel. At the end the backbone
is compared with the pretrained weights (MoCo v3's sanity check).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from patchmix.config import DATA, MODEL, OPTIM, configclass
from patchmix.data import IMAGENET_MEAN, IMAGENET_STD
from patchmix.distributed import wrap_ddp
from patchmix.evaluation.classifier import ClassifierConfig, ClassifierTask
from patchmix.weights import build_model

__all__ = ["LinearConfig", "LinearProbe", "linear_head", "linear_transform"]


@configclass
class LinearConfig(ClassifierConfig):
    """Linear probe: a linear classifier on the frozen CLS token (official protocol by default)."""

    output_dir: str = "output/linear"
    base_lr: float = 0.02  # the recipes set the official value of each architecture
    momentum: float = OPTIM(0.9, "SGD momentum (Nesterov, as timm's 'sgd' in the official code)", at_least=0,
                            at_most=1)
    batchnorm: bool = MODEL(False, "BatchNorm1d without affine before the classifier (MAE / MoCo v3 probe); off "
                            "in the official PatchMix code")
    head_init_std: float = MODEL(0.0, "initialise the classifier N(0, std), bias 0 (MoCo v3: 0.01); 0 = PyTorch's "
                                 "default init, as the official code", at_least=0)
    crop_min: float = DATA(0.08, "smallest RandomResizedCrop area of the training images", above=0, at_most=1)


def linear_transform(img_size: int, crop_min: float) -> Callable:
    """Official linear-probe augmentation: RandomResizedCrop(crop_min-1, bicubic) + flip + normalisation."""
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


class LinearProbe(ClassifierTask):
    """Frozen backbone + trainable head, SGD with Nesterov momentum and (by default) no weight decay."""

    kind, title = "linear", "Linear probe"

    def build(self) -> None:
        cfg, env = self.cfg, self.env
        model = build_model(self.loaded)
        model.head = linear_head(model.embed_dim, self.classes, cfg.batchnorm, cfg.head_init_std)
        model.num_classes = self.classes
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        model.to(env.device)
        model.head, trained_head = wrap_ddp(model.head, env.device)  # only the head has gradients to sync
        self.model = model
        self.peak_lr = cfg.base_lr * cfg.batch_size / 256
        self.optimizer = create_optimizer_v2(model.head, opt="sgd", lr=self.peak_lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum)
        self.criterion = nn.CrossEntropyLoss()

        def forward(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # frozen features: no graph through the backbone
                features = model.forward_head(model.forward_features(images), pre_logits=True)
            return trained_head(features)

        self.forward = forward

    @staticmethod
    def train_transform(cfg: LinearConfig, img_size: int) -> Callable:
        return linear_transform(img_size, cfg.crop_min)

    def train_mode(self) -> None:
        self.model.eval()  # the backbone never leaves eval mode (MoCo v3 / official since e565a1d)
        self.model.head.train()  # the optional probe BatchNorm uses batch statistics

    def finish(self, results: dict[str, Any]) -> None:
        """MoCo v3's sanity check: every backbone tensor still equals the pretrained one."""
        state = self.model.state_dict()
        changed = [k for k, v in self.loaded.state_dict.items() if not torch.equal(state[k].cpu(), v.cpu())]
        if changed:
            raise RuntimeError(f"sanity check failed: the frozen backbone changed during the linear probe "
                               f"({', '.join(changed[:5])}); this is a bug, please report it.")
        results["backbone_unchanged"] = True
        if self.env.is_main:
            print("sanity check passed: the backbone weights are unchanged")
