"""DINO, self-distillation with no labels (Caron et al., arXiv 2104.14294, ICCV 2021): the method module.

A student and a teacher of the same architecture (ViT + DINO head) see multi-crop views of each image: the teacher
only the 2 global crops, the student all of them (2 global + ``local_crops_number`` small ones). The loss is the
cross-entropy between the teacher's centred, sharpened softmax of one global crop and the student's softmax of
every OTHER crop, averaged over those pairs; after the loss the centre moves towards the batch mean of the teacher
outputs (of all processes). Only the student is optimised; after every optimiser step the teacher becomes an EMA
of it. As in facebookresearch/dino (``main_dino.py``, ``vision_transformer.py``, ``utils.py``).

Networks, and the keys of the official training checkpoint (``checkpoint.pth`` of ``main_dino.py``) they map to::

    ours (state_dict())          official checkpoint
    student.backbone.*           student: module.backbone.*   (timm ViT; the official ViT uses the same names)
    student.head.*               student: module.head.*       (mlp.*, last_layer.weight_g, last_layer.weight_v)
    teacher.backbone.*           teacher: backbone.*          (no ``module.`` unless the head has BatchNorm)
    teacher.head.*               teacher: head.*
    dino_loss.center             dino_loss: center

The reusable parts (SelfPatch builds on them): the networks and the loss in :mod:`patchmix.methods.dino_networks`
(:class:`DINOHead` with :class:`WeightNormLinear`, :class:`MultiCropNetwork`, :class:`DINOLoss` with its centre,
:func:`dino_vit_init_`; re-exported here), and here :class:`DINOTransform` (multi-crop views),
:class:`DINOSchedule` / :class:`DINOStepValues`, :func:`ema_update`, :func:`clip_gradients_per_tensor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from patchmix.config import DATA, MODEL, OPTIM, ConfigError, configclass, option
from patchmix.data import IMAGENET_MEAN, IMAGENET_STD, GaussianBlur, Solarize
from patchmix.engine import StepOutput, Timer, no_timer
from patchmix.methods.base import PretrainConfig, PretrainMethod
from patchmix.methods.dino_networks import (
    DINOHead,
    DINOLoss,
    MultiCropNetwork,
    WeightNormLinear,
    dino_vit_init_,
    same_size_runs,
    update_center_,
)
from patchmix.models import arch_spec, build_backbone
from patchmix.schedules import StepValues, cosine, warmup_cosine

__all__ = ["DINOConfig", "DINO", "DINO_HEADS", "DINOHead", "WeightNormLinear", "MultiCropNetwork", "DINOLoss",
           "DINOTransform", "DINOStepValues", "DINOSchedule", "ema_update", "clip_gradients_per_tensor",
           "dino_vit_init_", "same_size_runs", "update_center_"]

# Heads of DINO's ViTs (its vision_transformer.py): ViT-S has 6 (PatchMix's 12). No checkpoint records them.
DINO_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12}
LOSS = "DINO loss and teacher"


@configclass
class DINOConfig(PretrainConfig):
    """DINO pretraining. Defaults are those of the official ``main_dino.py`` (ViT-S/16 at 224 px, 100 epochs);
    recipes set the rest (the README's command lines)."""

    method: str = "dino"
    output_dir: str = "output/dino"
    seed: int = 0  # main_dino.py's default
    img_size: int = 224
    patch_size: int = 16
    batch_size: int = 512  # the README's vanilla run: 8 GPUs x 64
    arch: str = MODEL("vit_small", "vit_tiny (192-d, 3 heads), vit_small (384-d, 6 heads), vit_base (768-d, 12 "
                      "heads): DINO's ViTs", choices=("vit_tiny", "vit_small", "vit_base"))
    num_heads: int = MODEL(0, "override the number of attention heads (0 = DINO's: vit_tiny 3, vit_small 6, "
                           "vit_base 12)", at_least=0)
    drop_path: float = 0.1  # the student's; the teacher has none

    epochs: int = 100
    warmup_epochs: float = 10.0
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = OPTIM(3.0, "clip the gradient of every parameter tensor to this norm on its own, as DINO "
                             "(0 = off; the logged grad_norm is the global norm before clipping)", at_least=0)

    global_crops_scale: tuple[float, ...] = DATA((0.4, 1.0), "area range of the 2 global crops (img_size px)",
                                                 above=0, at_most=1)
    local_crops_number: int = DATA(8, "number of local crops (0 = two views only)", at_least=0)
    local_crop_size: int = DATA(96, "side of the local crops in pixels", at_least=1)
    local_crops_scale: tuple[float, ...] = DATA((0.05, 0.4), "area range of the local crops", above=0, at_most=1)
    color_jitter: tuple[float, ...] = DATA((0.4, 0.4, 0.2, 0.1), "brightness, contrast, saturation and hue "
                                           "strengths of the colour jitter (applied with p=0.8)", at_least=0)
    blur_probs: tuple[float, ...] = DATA((1.0, 0.1, 0.5), "Gaussian-blur probability of global crop 1, global "
                                         "crop 2 and the local crops", at_least=0, at_most=1)
    solarize_prob: float = DATA(0.2, "solarisation probability of global crop 2", at_least=0, at_most=1)

    out_dim: int = MODEL(65536, "output width K of the DINO head (the softmax is over K prototypes)", at_least=1)
    hidden_dim: int = MODEL(2048, "hidden width of the head's MLP", at_least=1)
    bottleneck_dim: int = MODEL(256, "width of the L2-normalised bottleneck before the last layer", at_least=1)
    head_layers: int = MODEL(3, "Linear layers of the head's MLP (GELU between them)", at_least=1)
    use_bn_in_head: bool = MODEL(False, "BatchNorm after the hidden Linear layers of the head")
    norm_last_layer: bool = MODEL(True, "keep the norm of every row of the weight-normalised last layer at 1 "
                                  "(weight_g frozen); off trains it (official advice: off for ViT-S, on for ViT-B)")
    momentum_teacher: float = MODEL(0.996, "EMA momentum of the teacher at the start; a cosine takes it to 1 "
                                    "(official advice: higher with small batches, e.g. 0.9995 at batch 256)",
                                    at_least=0, at_most=1)

    student_temp: float = option(0.1, "softmax temperature of the student", group=LOSS, above=0)
    teacher_temp: float = option(0.04, "softmax temperature of the teacher after its warm-up", group=LOSS, above=0)
    warmup_teacher_temp: float = option(0.04, "teacher temperature at epoch 0", group=LOSS, above=0)
    warmup_teacher_temp_epochs: int = option(0, "epochs of linear teacher-temperature warm-up (per epoch, reaching "
                                             "teacher_temp at the last warm-up epoch)", group=LOSS, at_least=0)
    center_momentum: float = option(0.9, "EMA momentum of the centre of the teacher outputs", group=LOSS,
                                    at_least=0, at_most=1)
    freeze_last_layer: int = option(1, "epochs during which the head's last layer gets no update", group=LOSS,
                                    at_least=0)


# ----------------------------------------------------------------------------------------------------------
# Views


class DINOTransform:
    """DINO's multi-crop augmentation of one image: 2 global crops at ``img_size`` and ``local_crops_number``
    local crops at ``local_crop_size``.

    Every crop: RandomResizedCrop (bicubic; area ``global_crops_scale`` or ``local_crops_scale``), horizontal
    flip (p 0.5), colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale (p 0.2); then Gaussian blur (radius
    U(0.1, 2)) with p 1.0 on global crop 1, 0.1 on global crop 2 and 0.5 on the local crops, solarisation with
    p 0.2 on global crop 2 only, and ImageNet normalisation. DINO's blur and solarisation draw from Python's
    ``random``; here every draw comes from torch's generator (same distributions), so the per-image seeding of
    :class:`patchmix.data.SeededTransformDataset` decides every crop.
    """

    def __init__(self, img_size: int = 224, global_crops_scale: Sequence[float] = (0.4, 1.0),
                 local_crops_number: int = 8, local_crops_scale: Sequence[float] = (0.05, 0.4),
                 local_crop_size: int = 96, color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                 blur_probs: Sequence[float] = (1.0, 0.1, 0.5), solarize_prob: float = 0.2,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(global_crops_scale) != 2 or len(local_crops_scale) != 2 or len(color_jitter) != 4 or len(
                blur_probs) != 3:
            raise ValueError("global_crops_scale and local_crops_scale take 2 values, color_jitter 4, blur_probs 3.")
        self.local_crops_number = local_crops_number
        self.global1 = self._crop(img_size, global_crops_scale, color_jitter, blur_probs[0], 0.0, mean, std)
        self.global2 = self._crop(img_size, global_crops_scale, color_jitter, blur_probs[1], solarize_prob, mean, std)
        self.local = self._crop(local_crop_size, local_crops_scale, color_jitter, blur_probs[2], 0.0, mean, std)

    @staticmethod
    def _crop(size: int, scale: Sequence[float], color_jitter: Sequence[float], blur_prob: float,
              solarize_prob: float, mean: Sequence[float], std: Sequence[float]) -> Callable:
        ops: list = [
            transforms.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(*color_jitter)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ]
        if blur_prob > 0:
            ops.append(transforms.RandomApply([GaussianBlur(0.1, 2.0)], p=blur_prob))
        if solarize_prob > 0:
            ops.append(transforms.RandomApply([Solarize()], p=solarize_prob))
        ops += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        return transforms.Compose(ops)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global1(image), self.global2(image)]
        crops += [self.local(image) for _ in range(self.local_crops_number)]
        return crops


# ----------------------------------------------------------------------------------------------------------
# Schedule, EMA, clipping


@dataclass(frozen=True)
class DINOStepValues(StepValues):
    """Plus the teacher's EMA momentum and temperature, and whether the head's last layer is frozen."""

    momentum: float
    teacher_temp: float
    last_layer_frozen: bool


@dataclass(frozen=True)
class DINOSchedule:
    """DINO's per-iteration schedules (``utils.cosine_scheduler`` and ``DINOLoss.teacher_temp_schedule``):

    * lr: linear warm-up from 0 over ``warmup_epochs`` (reaching ``peak_lr`` at the last warm-up step, like
      ``np.linspace``), then a cosine to ``min_lr`` over the remaining steps;
    * weight decay (of the decayed group): cosine from ``weight_decay`` to ``weight_decay_end`` over the run;
    * teacher momentum: cosine from ``momentum_teacher`` to 1 over the run, per iteration;
    * teacher temperature, per EPOCH: linear from ``warmup_teacher_temp`` (epoch 0) to ``teacher_temp`` (epoch
      ``warmup_teacher_temp_epochs - 1``), then constant;
    * the last layer is frozen during the first ``freeze_last_layer`` epochs.
    """

    steps_per_epoch: int
    epochs: int
    peak_lr: float
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    freeze_last_layer: int = 1

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lr(self, step: int) -> float:
        warmup = int(round(self.warmup_epochs * self.steps_per_epoch))
        return warmup_cosine(step, self.total_steps, warmup, self.peak_lr, self.min_lr)

    def wd(self, step: int) -> float:
        return cosine(self.weight_decay, self.weight_decay_end, step / max(1, self.total_steps))

    def momentum(self, step: int) -> float:
        return cosine(self.momentum_teacher, 1.0, step / max(1, self.total_steps))

    def temperature(self, epoch: int) -> float:
        warmup = self.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * epoch / max(1, warmup - 1)

    def at(self, step: int) -> DINOStepValues:
        epoch = step // self.steps_per_epoch
        return DINOStepValues(self.lr(step), self.wd(step), self.momentum(step), self.temperature(epoch),
                              epoch < self.freeze_last_layer)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter (buffers are not averaged),
    computed as the official code does (scale, then add the scaled student)."""
    target = list(teacher.parameters())
    source = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, torch._foreach_mul(source, 1.0 - momentum))


def clip_gradients_per_tensor(parameters: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """DINO's ``clip_gradients``: each gradient tensor is scaled by ``max_norm / (||g|| + 1e-6)`` when that is below
    1, on its own (unlike ``clip_grad_norm_``'s one global factor). Returns the global norm before clipping (what
    the engine logs as ``grad_norm``)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    factors = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, factors)
    return torch.linalg.vector_norm(torch.stack(norms)).item()


# ----------------------------------------------------------------------------------------------------------
# The method


class DINO(PretrainMethod):
    """Student and EMA teacher (each a :class:`MultiCropNetwork` of a timm ViT and a :class:`DINOHead`) and the
    loss with its centre.

    Args:
        backbone_kwargs: arguments of :func:`patchmix.models.build_backbone` (arch, img_size, patch_size, sizes).
        drop_path_rate: stochastic depth of the student (official 0.1; the teacher has none).
        head: keyword arguments of :class:`DINOHead` besides ``in_dim`` (out_dim, use_bn, norm_last_layer,
            nlayers, hidden_dim, bottleneck_dim).
        student_temp / center_momentum: of :class:`DINOLoss` (official 0.1 / 0.9).
    """

    name = "dino"
    config_class = DINOConfig

    def __init__(self, backbone_kwargs: dict, drop_path_rate: float = 0.1, head: dict | None = None,
                 student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        head = {"out_dim": 65536, **(head or {})}
        vit = dict(backbone_kwargs, pos_interpolation="dino")
        # built in the official order: student ViT, teacher ViT, student head, teacher head
        student_backbone = dino_vit_init_(build_backbone(drop_path_rate=drop_path_rate, **vit))
        teacher_backbone = dino_vit_init_(build_backbone(drop_path_rate=0.0, **vit))
        embed_dim = student_backbone.embed_dim
        self.student = MultiCropNetwork(student_backbone, DINOHead(embed_dim, **head))
        self.teacher = MultiCropNetwork(teacher_backbone, DINOHead(embed_dim, **{**head, "norm_last_layer": True}))
        self.teacher.load_state_dict(self.student.state_dict())  # the teacher starts as the student
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.dino_loss = DINOLoss(head["out_dim"], student_temp, center_momentum)

    # -- the method's declarations -------------------------------------------------------------------------

    @staticmethod
    def backbone_kwargs(cfg: DINOConfig) -> dict[str, Any]:
        spec = arch_spec(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads or DINO_HEADS[cfg.arch])
        return {"arch": cfg.arch, "img_size": cfg.img_size, "patch_size": cfg.patch_size,
                "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads}

    @classmethod
    def from_config(cls, cfg: DINOConfig) -> "DINO":
        head = dict(out_dim=cfg.out_dim, use_bn=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer,
                    nlayers=cfg.head_layers, hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim)
        return cls(cls.backbone_kwargs(cfg), cfg.drop_path, head, cfg.student_temp, cfg.center_momentum)

    @staticmethod
    def train_transform(cfg: DINOConfig) -> Callable[[Image.Image], list[torch.Tensor]]:
        return DINOTransform(cfg.img_size, cfg.global_crops_scale, cfg.local_crops_number, cfg.local_crops_scale,
                             cfg.local_crop_size, cfg.color_jitter, cfg.blur_probs, cfg.solarize_prob)

    def build_schedules(self, cfg: DINOConfig, steps_per_epoch: int) -> DINOSchedule:
        return DINOSchedule(steps_per_epoch, cfg.epochs, cfg.base_lr * cfg.batch_size / 256, cfg.min_lr,
                            cfg.warmup_epochs, cfg.weight_decay, cfg.weight_decay_end, cfg.momentum_teacher,
                            cfg.teacher_temp, cfg.warmup_teacher_temp, cfg.warmup_teacher_temp_epochs,
                            cfg.freeze_last_layer)

    @classmethod
    def check_config(cls, cfg: DINOConfig, batch_per_process: int) -> None:
        try:
            cls.backbone_kwargs(cfg)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if cfg.img_size % cfg.patch_size:
            raise ConfigError(f"img_size {cfg.img_size} is not divisible by patch_size {cfg.patch_size}; choose a "
                              f"multiple of {cfg.patch_size}.")
        if cfg.local_crops_number and cfg.local_crop_size % cfg.patch_size:
            raise ConfigError(f"local_crop_size {cfg.local_crop_size} is not divisible by patch_size "
                              f"{cfg.patch_size}; choose a multiple of {cfg.patch_size}.")
        if (len(cfg.global_crops_scale), len(cfg.local_crops_scale), len(cfg.color_jitter), len(cfg.blur_probs)) != (
                2, 2, 4, 3):
            raise ConfigError("global_crops_scale and local_crops_scale take 2 values, color_jitter 4 (brightness, "
                              "contrast, saturation, hue) and blur_probs 3 (global 1, global 2, local crops).")

    def feature_encoder(self) -> VisionTransformer:
        return self.teacher.backbone  # DINO's evaluations read the teacher

    def compile_backbones(self) -> None:
        for network in (self.student, self.teacher):
            network.backbone.forward_features = torch.compile(network.backbone.forward_features)

    def describe(self, cfg: DINOConfig) -> str:
        temps = (f"{cfg.warmup_teacher_temp:g} -> {cfg.teacher_temp:g} over {cfg.warmup_teacher_temp_epochs} epochs"
                 if cfg.warmup_teacher_temp_epochs else f"{cfg.teacher_temp:g}")
        return (f"DINO: 2 global + {cfg.local_crops_number} local crops ({cfg.local_crop_size}px), head out "
                f"{cfg.out_dim}, teacher temp {temps}, last layer {'normalised' if cfg.norm_last_layer else 'free'}"
                f", frozen {cfg.freeze_last_layer} epoch(s)")

    # -- one step -------------------------------------------------------------------------------------------

    def forward(self, views: list[torch.Tensor], values: DINOStepValues, timer: Timer = no_timer) -> StepOutput:
        """Teacher on the 2 global crops (no gradient), student on all crops, the loss, then the centre update."""
        with timer("teacher"), torch.no_grad():
            teacher_output = self.teacher(views[:2])
        with timer("student"):
            student_output = self.student(views)
        with timer("loss"):
            loss, teacher_probs = self.dino_loss(student_output, teacher_output, values.teacher_temp, len(views))
            self.dino_loss.update_center(teacher_output)
            entropy = torch.special.entr(teacher_probs).sum(dim=-1).mean()
        return StepOutput(loss, {"teacher_entropy": entropy.detach()})

    def after_backward(self, values: DINOStepValues) -> None:
        """During the first ``freeze_last_layer`` epochs the last layer gets no gradient (hence no update, not
        even weight decay), as the official ``cancel_gradients_last_layer``."""
        if values.last_layer_frozen:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def clip_gradients(self, max_norm: float) -> float:
        return clip_gradients_per_tensor(list(self.student.parameters()), max_norm)

    def after_step(self, values: DINOStepValues) -> None:
        """The teacher follows the student AFTER the optimiser step (official order)."""
        ema_update(self.teacher, self.student, values.momentum)
