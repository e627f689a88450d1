"""What a pretraining method is, for the engine and the scripts: :class:`PretrainMethod` and its config.

A method is ONE module (``patchmix/methods/<name>.py``) that declares:

* its config, a subclass of :class:`PretrainConfig` with the method's own fields (they become flags);
* its networks, as attributes named like the official checkpoints' keys, so that ``state_dict()`` *is* the
  official key layout and official files load without renaming;
* its training views (:meth:`PretrainMethod.train_transform`: one image -> a list of tensors);
* how one batch of views becomes a loss and its logged terms (:meth:`PretrainMethod.forward`, returning a
  :class:`~patchmix.engine.StepOutput`), and what happens before it (:meth:`~PretrainMethod.update_teacher`,
  an EMA teacher or momentum encoder);
* its per-step schedule (:meth:`~PretrainMethod.build_schedules`) and optimiser groups
  (:meth:`~PretrainMethod.param_groups`);
* the encoder the evaluations measure (:meth:`~PretrainMethod.feature_encoder`).

The engine, the checkpoints, resume, logging and the entry scripts know nothing else about a method; adding one
adds a module, registers it in ``patchmix/methods/__init__.py`` and adds recipes in ``config/pretrain/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_weight_decay

from patchmix.config import DATA, MODEL, OPTIM, RUN, ConfigError, TrainConfig, configclass
from patchmix.engine import StepOutput, Timer, no_timer
from patchmix.models import arch_spec
from patchmix.schedules import StepValues

__all__ = ["PretrainConfig", "PretrainMethod", "check_backbone"]


@configclass
class PretrainConfig(TrainConfig):
    """What every pretraining method shares: the run, the ViT, the optimisation. Methods add their own fields."""

    method: str = RUN("patchmix", "pretraining method (MoCo v3 = patchmix with --num-mix 1)")
    output_dir: str = "output/pretrain"
    compile: bool = RUN(False, "torch.compile the backbones (GPU; first steps are slow while it compiles)",
                        run_only=True)
    save_freq: int = RUN(100, "keep a numbered checkpoint every N epochs (checkpoint.pth is rewritten every "
                         "epoch)", run_only=True, at_least=0)
    knn_eval: bool = RUN(False, "after training, report weighted-kNN accuracy of the learned features next to "
                         "that of a randomly initialised encoder", run_only=True)
    knn_train_subset: int = RUN(0, "images of the train split used as the kNN bank (0 = all)", run_only=True,
                                at_least=0)
    knn_test_subset: int = RUN(0, "images of the test split classified by kNN (0 = all)", run_only=True,
                               at_least=0)

    img_size: int = DATA(32, "side of the global crops in pixels", at_least=1)
    batch_size: int = 512

    arch: str = MODEL("vit_small", "vit_tiny (192-d, 3 heads), vit_small (384-d, 12 heads), vit_base (768-d, "
                      "12 heads)", choices=("vit_tiny", "vit_small", "vit_base"))
    patch_size: int = MODEL(2, "ViT patch size (16 at 224 px, 2 at 32 px)", at_least=1)
    embed_dim: int = MODEL(0, "override the width of ARCH (0 = keep)", at_least=0)
    depth: int = MODEL(0, "override the number of blocks of ARCH (0 = keep)", at_least=0)
    num_heads: int = MODEL(0, "override the number of attention heads of ARCH (0 = keep; the PatchMix paper's "
                           "table says 6 for ViT-S, the released code and weights use 12)", at_least=0)
    drop_path: float = MODEL(0.1, "stochastic depth of the trained encoder", at_least=0, at_most=1)

    epochs: int = 800
    warmup_epochs: float = 100.0
    min_lr: float = 1e-6
    weight_decay: float = OPTIM(0.04, "AdamW weight decay at the start (biases and norms: none)", at_least=0)
    weight_decay_end: float = OPTIM(0.4, "weight decay at the end (cosine)", at_least=0)


class PretrainMethod(nn.Module, ABC):
    """A self-supervised pretraining method (see the module docstring for the contract)."""

    name: ClassVar[str]
    config_class: ClassVar[type[PretrainConfig]]

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any) -> "PretrainMethod":
        """Build the networks. The construction order is part of the method: it decides the random init."""

    @staticmethod
    @abstractmethod
    def train_transform(cfg: Any) -> Callable[[Image.Image], list[torch.Tensor]]:
        """The augmentation of one training image into the method's views."""

    @abstractmethod
    def build_schedules(self, cfg: Any, steps_per_epoch: int) -> Any:
        """An object whose ``at(step)`` returns the :class:`~patchmix.schedules.StepValues` of a global step."""

    @abstractmethod
    def forward(self, views: list[torch.Tensor], values: StepValues, timer: Timer = no_timer) -> StepOutput:
        """One batch of views (each ``(B, C, H, W)`` on the device) -> the loss and its terms."""

    @abstractmethod
    def feature_encoder(self) -> VisionTransformer:
        """The ViT whose CLS token the evaluations measure (e.g. the momentum encoder or the teacher)."""

    @classmethod
    def check_config(cls, cfg: Any, batch_per_process: int) -> None:
        """Raise :class:`~patchmix.config.ConfigError` on settings the method cannot train with."""

    @staticmethod
    def backbone_kwargs(cfg: Any) -> dict[str, Any]:
        """The ViT sizes stored in checkpoints, so that evaluation rebuilds the backbone without the config."""
        spec = arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)
        return {"arch": cfg.arch, "img_size": cfg.img_size, "patch_size": cfg.patch_size,
                "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads}

    @classmethod
    def steps_per_batch(cls, cfg: Any) -> int:
        """Optimiser steps per loaded batch (the length of :meth:`substeps`)."""
        return 1

    def substeps(self, views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """The views of each optimiser step one loaded batch makes (default: one step on all of them)."""
        return [views]

    def update_teacher(self, values: StepValues) -> None:
        """Before the forward pass of a step: move an EMA teacher / momentum encoder (default: none)."""

    def after_backward(self, values: StepValues) -> None:
        """After the backward pass, before clipping and the optimiser step (e.g. cancel a frozen layer's
        gradients; default: nothing)."""

    def after_step(self, values: StepValues) -> None:
        """After the optimiser step (e.g. update a running center; default: nothing)."""

    def clip_gradients(self, max_norm: float) -> float:
        """``--clip-grad``: clip the gradients, return the norm before clipping (default: the global norm)."""
        return torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.requires_grad], max_norm).item()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on every trainable tensor of >= 2 dims that is not a bias (this includes a ViT's
        cls_token and pos_embed, as in MoCo v3 and the official PatchMix code), none on biases and norms.

        Groups whose decay follows the weight-decay schedule are marked ``apply_weight_decay``.
        """
        groups = param_groups_weight_decay(self, weight_decay=1.0)  # any non-zero value: only the split matters
        for group in groups:
            group["apply_weight_decay"] = group["weight_decay"] > 0
            group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0
        return groups

    def generators(self) -> dict[str, torch.Generator]:
        """Random generators the method draws from (their state is checkpointed for an exact resume)."""
        return {}

    def compile_backbones(self) -> None:
        """``torch.compile`` the heavy parts (``--compile``); keys of the state dict must not change."""

    def describe(self, cfg: Any) -> str:
        """One line for the run header."""
        return self.name


def check_backbone(cfg: Any) -> None:
    """Settings of the ViT that cannot work, as one-line errors."""
    try:
        arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if cfg.img_size % cfg.patch_size:
        raise ConfigError(f"img_size {cfg.img_size} is not divisible by patch_size {cfg.patch_size}; choose a "
                          f"multiple of {cfg.patch_size}.")
