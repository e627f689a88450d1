"""APS, Asymmetric Patch Sampling (Shen et al., arXiv 2306.02854, Pattern Recognition 2025): the method module.

Two crops of an image; the ViT sees a quarter of the patches of each: a random subset of view 1 (sparse
sampling) and the view-2 patches that overlap that subset least (selective sampling; :mod:`patchmix.sampling`).
Each loaded batch is sampled ``nsampling`` times with disjoint view-1 subsets, and every sampling is one
optimiser step. The loss is the symmetric InfoNCE of the predictions against the other view's projections
(stop-gradient), ``l(p1, sg z2) + l(p2, sg z1)``, with the keys of all processes; there is no momentum encoder.

Networks (our checkpoints: ``base_encoder.*`` in timm's ViT layout, ``base_encoder.head.*`` the projector,
``predictor.*``; the official files, whose ViT has its own key names, load into every evaluation through
:mod:`patchmix.weights`)::

    base_encoder   timm ViT as the official one: no qkv bias, LayerNorm eps 1e-5, a position table for the
                   patch tokens only (added to all of them before the sampled ones are gathered), CLS token
                   without position, final LayerNorm, CLS output; head = projector D -> 512 -> 512 -> 128
    predictor      128 -> 512 -> 512 -> 128 (MoCo-v3 MLPs with BatchNorm, the last without affine)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from PIL import Image
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from patchmix.config import DATA, MODEL, ConfigError, configclass, option
from patchmix.distributed import get_rank
from patchmix.engine import StepOutput, Timer, no_timer
from patchmix.loss import info_nce
from patchmix.methods.base import PretrainConfig, PretrainMethod, check_backbone
from patchmix.models import arch_spec, build_backbone, build_mlp
from patchmix.sampling import CIFAR_MEAN, CIFAR_STD, APSTransform, aps_sampling
from patchmix.schedules import StepValues

__all__ = ["APSConfig", "APS", "APSSchedule", "APS_HEADS", "encode_selected"]

# Heads of the official APS ViTs (its ViT-S has 6, PatchMix's 12).
APS_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SAMPLING = "APS sampling and loss"


@configclass
class APSConfig(PretrainConfig):
    """APS pretraining. Defaults are the official CIFAR recipe (ViT-S/2); recipes set the rest."""

    method: str = "aps"
    output_dir: str = "output/aps"
    epochs: int = 1600
    warmup_epochs: float = 20.0
    base_lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05  # the official weight decay is constant
    drop_path: float = 0.0  # configured but not wired in the official code

    crop_scale: tuple[float, ...] = DATA((0.15, 1.0), "area range of RandomResizedCrop (bilinear) for both views",
                                         above=0, at_most=1)
    color_jitter: tuple[float, ...] = DATA((0.4, 0.4, 0.4, 0.1), "brightness, contrast, saturation and hue "
                                           "strengths of the colour jitter (applied with p=0.8)", at_least=0)
    normalization: str = DATA("cifar", "mean/std of the pretraining views: cifar (official pretraining) or "
                              "imagenet (what every evaluation uses, the official fine-tuning too)",
                              choices=("cifar", "imagenet"))

    hidden_dim: int = MODEL(512, "hidden width of the projector and predictor", at_least=1)
    out_dim: int = MODEL(128, "output width of the projector and predictor", at_least=1)

    sampling_ratio: float = option(0.25, "fraction of the patches of each view the ViT sees", group=SAMPLING,
                                   above=0, at_most=1)
    nsampling: int = option(4, "disjoint samplings of view 1 per loaded batch, one optimiser step each",
                            group=SAMPLING, at_least=1)
    power: float = option(3.0, "selective sampling draws view-2 patches with probability ~ uncovered ** POWER",
                          group=SAMPLING, at_least=0)
    respect_flips: bool = option(True, "map horizontally flipped views correctly when computing the overlap "
                                 "(off: the official code, which ignores flips)", group=SAMPLING)
    temperature: float = option(0.1, "InfoNCE temperature", group=SAMPLING, above=0)


@dataclass(frozen=True)
class APSSchedule:
    """The official per-epoch schedule: ``lr = peak x min((e + 1) / warmup, (1 + cos(pi e / E)) / 2)`` for the
    whole of epoch ``e`` (never below ``min_lr``, official 0); weight decay cosine from its start to its end
    value (official: constant 0.05)."""

    steps_per_epoch: int
    epochs: int
    peak_lr: float
    warmup_epochs: float
    min_lr: float = 0.0
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05

    def at(self, step: int) -> StepValues:
        epoch = step // self.steps_per_epoch
        factor = min((epoch + 1) / (self.warmup_epochs + 1e-8), 0.5 * (1 + math.cos(math.pi * epoch / self.epochs)))
        progress = step / max(1, self.steps_per_epoch * self.epochs)
        wd = self.weight_decay_end + 0.5 * (self.weight_decay - self.weight_decay_end) * (
            1 + math.cos(math.pi * progress))
        return StepValues(max(self.min_lr, self.peak_lr * factor), wd)


def encode_selected(vit: VisionTransformer, images: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """The CLS token (after the final LayerNorm) of ``vit`` when it sees only the patches ``cells`` (``(B, k)``
    row-major indices) of ``images``: position embeddings are added to all patch tokens, then the sampled ones
    are gathered and the CLS token (no position) is prepended, as in the official APS ViT."""
    tokens = vit.patch_embed(images)
    if tokens.dim() == 4:  # dynamic-size patch embedding keeps (B, H, W, D)
        tokens = tokens.flatten(1, 2)
    tokens = tokens + vit.pos_embed
    selected = tokens.gather(1, cells[..., None].expand(-1, -1, tokens.shape[-1]))
    x = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), selected], dim=1)
    x = vit.norm(vit.blocks(vit.norm_pre(vit.pos_drop(x))))
    return x[:, 0]


def _official_init(vit: VisionTransformer) -> None:
    """The official APS initialisation: PyTorch's defaults for every layer, truncated normal (std 0.02) for the
    CLS token and the position table."""
    for module in vit.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
            module.reset_parameters()
    trunc_normal_(vit.cls_token, std=0.02)
    trunc_normal_(vit.pos_embed, std=0.02)


class APS(PretrainMethod):
    """Encoder + projector (``base_encoder``), predictor, and the sampling of each step.

    Args:
        backbone_kwargs: arguments of :func:`patchmix.models.build_backbone`, with APS's ViT options.
        drop_path_rate: stochastic depth (official: 0).
        hidden_dim / out_dim: widths of the projector and predictor (official 512 / 128).
        temperature: InfoNCE temperature (official 0.1).
        sampling: ``dict(sampling_ratio=, nsampling=, power=, respect_flips=)`` of :func:`aps_sampling`.
        seed: seed of the sampling generator (offset by the process rank: each process samples its own images).
    """

    name = "aps"
    config_class = APSConfig

    def __init__(self, backbone_kwargs: dict, drop_path_rate: float = 0.0, hidden_dim: int = 512,
                 out_dim: int = 128, temperature: float = 0.1, sampling: dict | None = None, seed: int = 0) -> None:
        super().__init__()
        self.temperature = temperature
        self.sampling = {"sampling_ratio": 0.25, "nsampling": 4, "power": 3.0, "respect_flips": True,
                         **(sampling or {})}
        self.grid_size = int(backbone_kwargs["img_size"]) // int(backbone_kwargs["patch_size"])
        self.sample_generator = torch.Generator().manual_seed(seed * 1_000_003 + get_rank())
        self.base_encoder = build_backbone(drop_path_rate=drop_path_rate, **backbone_kwargs)
        _official_init(self.base_encoder)
        self.base_encoder.head = build_mlp(3, self.base_encoder.embed_dim, hidden_dim, out_dim)
        self.predictor = build_mlp(3, out_dim, hidden_dim, out_dim)

    # -- the method's declarations -------------------------------------------------------------------------

    @staticmethod
    def backbone_kwargs(cfg: APSConfig) -> dict[str, Any]:
        spec = arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads or APS_HEADS[cfg.arch])
        return {"arch": cfg.arch, "img_size": cfg.img_size, "patch_size": cfg.patch_size,
                "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads,
                "qkv_bias": False, "norm_eps": 1e-5, "pos_embed_cls": False}

    @classmethod
    def from_config(cls, cfg: APSConfig) -> "APS":
        sampling = dict(sampling_ratio=cfg.sampling_ratio, nsampling=cfg.nsampling, power=cfg.power,
                        respect_flips=cfg.respect_flips)
        return cls(cls.backbone_kwargs(cfg), cfg.drop_path, cfg.hidden_dim, cfg.out_dim, cfg.temperature,
                   sampling, cfg.seed)

    @staticmethod
    def train_transform(cfg: APSConfig) -> Callable[[Image.Image], list[torch.Tensor]]:
        mean, std = (CIFAR_MEAN, CIFAR_STD) if cfg.normalization == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)
        return APSTransform(cfg.img_size, cfg.crop_scale, mean, std, color_jitter=cfg.color_jitter)

    def build_schedules(self, cfg: APSConfig, steps_per_epoch: int) -> APSSchedule:
        return APSSchedule(steps_per_epoch, cfg.epochs, cfg.base_lr * cfg.batch_size / 256, cfg.warmup_epochs,
                           cfg.min_lr, cfg.weight_decay, cfg.weight_decay_end)

    @classmethod
    def check_config(cls, cfg: APSConfig, batch_per_process: int) -> None:
        check_backbone(cfg)
        cells = (cfg.img_size // cfg.patch_size) ** 2
        chunk = int(cells * cfg.sampling_ratio)
        if chunk < 1 or chunk * cfg.nsampling > cells:
            raise ConfigError(f"{cfg.nsampling} disjoint samplings of {chunk} of the {cells} patches do not fit: "
                              f"lower --nsampling or --sampling-ratio (nsampling x ratio must be <= 1 and each "
                              f"sampling needs at least one patch).")
        if len(cfg.crop_scale) != 2 or len(cfg.color_jitter) != 4:
            raise ConfigError("crop_scale takes 2 values and color_jitter 4 (brightness, contrast, saturation, "
                              "hue).")

    @classmethod
    def steps_per_batch(cls, cfg: APSConfig) -> int:
        return cfg.nsampling

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """One group: the official AdamW decays every parameter, biases and norms included."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay,
                 "apply_weight_decay": True}]

    def feature_encoder(self) -> VisionTransformer:
        return self.base_encoder

    def generators(self) -> dict[str, torch.Generator]:
        return {"sampling": self.sample_generator}

    def describe(self, cfg: APSConfig) -> str:
        s = self.sampling
        return (f"APS: {s['nsampling']} samplings of {s['sampling_ratio']:g} of the patches per batch, power "
                f"{s['power']:g}, flips {'respected' if s['respect_flips'] else 'ignored (official)'}")

    # -- one step -------------------------------------------------------------------------------------------

    def substeps(self, views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """``[x1, x2, meta1, meta2]`` -> ``nsampling`` x ``[x1, x2, cells1, cells2]`` (one optimiser step each)."""
        x1, x2, meta1, meta2 = views
        sample = aps_sampling(meta1, meta2, self.grid_size, generator=self.sample_generator, **self.sampling)
        return [[x1, x2, sample.view1[j], sample.view2[j]] for j in range(sample.view1.shape[0])]

    def forward(self, views: list[torch.Tensor], values: StepValues, timer: Timer = no_timer) -> StepOutput:
        """Both views through the encoder (their sampled patches only), the predictor, the symmetric loss."""
        x1, x2, cells1, cells2 = views
        z1 = self.base_encoder.head(encode_selected(self.base_encoder, x1, cells1))
        z2 = self.base_encoder.head(encode_selected(self.base_encoder, x2, cells2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss1, similarity1 = info_nce(p1, z2.detach(), self.temperature)
        loss2, similarity2 = info_nce(p2, z1.detach(), self.temperature)
        return StepOutput(loss1 + loss2, {"similarity": 0.5 * (similarity1 + similarity2)})
