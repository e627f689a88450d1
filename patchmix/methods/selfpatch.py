"""SelfPatch, patch-level self-distillation on top of DINO (Yun et al., *Patch-level Representation Learning for
Self-supervised Vision Transformers*, CVPR 2022; spec section 9): the method module.

SelfPatch is DINO with a ViT that has no CLS token and a second, patch-level loss:

* student and teacher are :class:`~patchmix.selfpatch_head.SelfPatchViT` backbones (all patch tokens out) with the
  SelfPatch head (a query token, two class-attention blocks and a LayerNorm: ``ca_head``), and two DINO heads:
  ``c_head`` (``out_dim`` prototypes) on the head's aggregate of all patch tokens, the image-level vector, and
  ``p_head`` (``out_dim_selfpatch`` = 4096 prototypes) on patch-level vectors;
* the **image loss** is DINO's (teacher on the 2 global crops, student on every other crop), with its centre;
* the **patch loss** pairs, in EVERY crop (global and local: the teacher runs on all of them), the student's own
  patch token ``i`` (after the head's LayerNorm) with the teacher's aggregate of the ``k_num`` = 4 neighbours of
  patch ``i`` most cosine-similar to it among the 8 others of its 3x3 window (the window wraps around the grid
  edges, as the official index arithmetic), aggregated per patch by the teacher's SelfPatch head: a DINO
  cross-entropy per patch with its own centre (``patch_center``), the same temperatures, averaged over the patches
  of a crop, then over the crops;
* loss = image loss + ``loss_weight`` (0.1) x patch loss; both centres move after the loss, the image centre
  towards the mean teacher output over ALL crops (global and local), the patch centre towards the mean over every
  patch of every crop.

Everything else is DINO's (:mod:`patchmix.methods.dino`): multi-crop views, AdamW groups, schedules, per-tensor
clipping, the last layers frozen in the first epoch (both DINO heads here), the teacher an EMA of the student
after each step. As in alinlab/SelfPatch (``main_selfpatch.py``, ``selfpatch_vision_transformer.py``).

Networks, and the keys of the official training checkpoint (``checkpoint.pth`` of ``main_selfpatch.py``)::

    ours (state_dict())          official checkpoint
    student.backbone.*           student: module.backbone.*     (the ViT; timm's names are the official ones)
    student.ca_head.*            student: module.ca_head.*      (the SelfPatch head)
    student.c_head.*, p_head.*   student: module.c_head.*, module.p_head.*
    teacher.{backbone, ca_head, c_head, p_head}.*    teacher: the same keys (no ``module.``)
    dino_loss.center             dino_loss: center              (ours (1, K), the official (1, 1, K))
    dino_loss.patch_center       dino_loss: patch_center

The SelfPatch head lives inside our backbone (``SelfPatchViT.ca_head``: the feature of every evaluation); the
state dict lists it as ``ca_head.*`` beside the backbone, as the official wrapper does (:class:`SelfPatchNetwork`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from patchmix.config import MODEL, ConfigError, configclass, option
from patchmix.engine import StepOutput, Timer, no_timer
from patchmix.methods.base import PretrainMethod
from patchmix.methods.dino import (
    DINO,
    DINOConfig,
    DINOHead,
    DINOLoss,
    DINOStepValues,
    dino_vit_init_,
    same_size_runs,
    update_center_,
)
from patchmix.models import build_backbone
from patchmix.selfpatch_head import SelfPatchHead, SelfPatchViT, select_neighbours

__all__ = ["SelfPatchConfig", "SelfPatch", "SelfPatchNetwork", "SelfPatchLoss", "NEIGHBOURHOOD"]

NEIGHBOURHOOD = 3  # the window of candidate neighbours (official ``k_size``, fixed): 3x3, i.e. 8 candidates
LOSS = "SelfPatch loss"


@configclass
class SelfPatchConfig(DINOConfig):
    """SelfPatch pretraining. Defaults are those of the official ``main_selfpatch.py`` and its README command
    (ViT-S/16 at 224 px, 300 epochs, batch 8 x 128); recipes set the rest."""

    method: str = "selfpatch"
    output_dir: str = "output/selfpatch"
    batch_size: int = 1024  # the README's command: 8 GPUs x --batch_size_per_gpu 128
    epochs: int = 300
    global_crops_scale: tuple[float, ...] = (0.25, 1.0)
    local_crops_scale: tuple[float, ...] = (0.05, 0.25)

    out_dim_selfpatch: int = MODEL(4096, "output width of the patch-level DINO head (its own prototypes and "
                                   "centre)", at_least=1)
    k_num: int = option(4, "neighbours aggregated per patch by the teacher: the most cosine-similar of the 8 others "
                        "of its 3x3 window", group=LOSS, at_least=1, at_most=NEIGHBOURHOOD ** 2 - 1)
    loss_weight: float = option(0.1, "weight of the patch loss (the image loss has weight 1)", group=LOSS,
                                at_least=0)


class SelfPatchNetwork(nn.Module):
    """SelfPatch's student or teacher: a :class:`SelfPatchViT` (with its SelfPatch head), the DINO head of the
    image vector (``c_head``) and the DINO head of the patch vectors (``p_head``).

    The backbone runs once per run of same-size crops (the global crops together, the local crops together, as
    the official code calls its wrapper); ``forward`` returns the image logits of all crops, crop by crop
    ``(len(crops) * B, K)``, and the patch logits of each crop ``[(B, N_crop, K_patch), ...]``. The patch vectors
    are the student's own patch tokens after the head's LayerNorm, or (``k_num > 0``, the teacher) the head's
    aggregate of the ``k_num`` most similar of each patch's 3x3 neighbours (``timer`` times the matching and the
    aggregation on their own: ``tools/benchmark.py`` reports their shares of a step).

    State-dict keys are those of the official ``MultiCropWrapper``: ``backbone.*``, ``ca_head.*`` (the SelfPatch
    head, which is ``backbone.ca_head`` here), ``c_head.*``, ``p_head.*``.
    """

    def __init__(self, backbone: SelfPatchViT, c_head: nn.Module, p_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.c_head = c_head
        self.p_head = p_head
        self.register_state_dict_post_hook(_head_beside_backbone)
        self.register_load_state_dict_pre_hook(_head_into_backbone)

    @property
    def ca_head(self) -> SelfPatchHead:
        return self.backbone.ca_head

    def forward(self, crops: Sequence[torch.Tensor], k_num: int = 0, timer: Timer = no_timer
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        images, patches = [], []
        for start, end in same_size_runs(crops):
            batch = torch.cat(list(crops[start:end])) if end - start > 1 else crops[start]
            tokens = self.backbone.forward_features(batch)                        # (n B, N, D): no CLS token
            images.append(self.backbone.forward_head(tokens, pre_logits=True))   # the image vector (n B, D)
            if k_num:
                with timer("neighbour_matching"):
                    groups = select_neighbours(tokens, k_num, NEIGHBOURHOOD)      # (n B, N, k, D)
                with timer("neighbour_aggregation"):
                    vectors = self.ca_head.aggregate(groups)
            else:
                vectors = self.ca_head.norm(tokens)
            patches += list(self.p_head(vectors).chunk(end - start))
        image = torch.cat(images) if len(images) > 1 else images[0]
        return self.c_head(image), patches


_HEAD = "ca_head."


def _head_beside_backbone(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict(): ``backbone.ca_head.*`` -> ``ca_head.*``, listed after the backbone (the official layout)."""
    mine = [k for k in state_dict if k.startswith(prefix)]
    items = [(k, state_dict.pop(k)) for k in mine]
    inner = prefix + "backbone." + _HEAD
    backbone = [(k, v) for k, v in items if k.startswith(prefix + "backbone.") and not k.startswith(inner)]
    head = [(prefix + _HEAD + k[len(inner):], v) for k, v in items if k.startswith(inner)]
    rest = [(k, v) for k, v in items if not k.startswith(prefix + "backbone.")]
    state_dict.update(backbone + head + rest)


def _head_into_backbone(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict(): ``ca_head.*`` -> ``backbone.ca_head.*``."""
    for key in [k for k in state_dict if k.startswith(prefix + _HEAD)]:
        state_dict[prefix + "backbone." + key[len(prefix):]] = state_dict.pop(key)


class SelfPatchLoss(DINOLoss):
    """DINO's image loss with its centre (``center``), plus SelfPatch's patch loss with its own centre
    (``patch_center``), the same temperatures and centre momentum, as ``main_selfpatch.DINOLoss``."""

    def __init__(self, out_dim: int, patch_out_dim: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum)
        self.register_buffer("patch_center", torch.zeros(1, patch_out_dim))

    def patch_loss(self, student_patches: Sequence[torch.Tensor], teacher_patches: Sequence[torch.Tensor],
                   teacher_temp: float) -> torch.Tensor:
        """Per crop, the mean over its patches of ``H(softmax((t_i - patch_center) / teacher_temp),
        softmax(s_i / student_temp))``, ``t_i`` the teacher's aggregated neighbours of patch ``i`` and ``s_i`` the
        student's patch ``i`` of the SAME crop; averaged over the crops. The centre is not updated here."""
        if len(student_patches) != len(teacher_patches):
            raise ValueError(f"{len(student_patches)} student crops but {len(teacher_patches)} teacher crops.")
        total = student_patches[0].new_zeros((), dtype=torch.float32)
        for student, teacher in zip(student_patches, teacher_patches):
            q = self.teacher_probabilities(teacher, teacher_temp, self.patch_center)
            log_p = F.log_softmax(student.float() / self.student_temp, dim=-1)
            total = total + torch.sum(-q * log_p, dim=-1).mean()
        return total / len(student_patches)

    @torch.no_grad()
    def update_patch_center(self, teacher_patches: Sequence[torch.Tensor]) -> None:
        """``patch_center <- m * patch_center + (1 - m) * mean of the teacher's patch outputs`` over every patch
        of every crop of every process (crops of different sizes weigh by their patch counts)."""
        batch_sum = sum(t.detach().float().sum(1).sum(0, keepdim=True) for t in teacher_patches)
        count = sum(t.shape[0] * t.shape[1] for t in teacher_patches)
        update_center_(self.patch_center, batch_sum, count, self.center_momentum)


class SelfPatch(DINO):
    """Student and EMA teacher (each a :class:`SelfPatchNetwork`), the image and patch losses and their centres.
    A :class:`~patchmix.methods.dino.DINO` in everything but the networks, the forward pass and the frozen layers.

    Args:
        backbone_kwargs: arguments of :func:`patchmix.models.build_backbone` (``selfpatch_head=True``).
        drop_path_rate: stochastic depth of the student's ViT (official 0.1; the teacher and the heads have none).
        head: keyword arguments of :class:`DINOHead` besides ``in_dim`` (out_dim, norm_last_layer, nlayers,
            hidden_dim, bottleneck_dim), for both DINO heads; ``patch_out_dim`` replaces out_dim for ``p_head``.
        k_num: neighbours aggregated per patch (official 4). loss_weight: of the patch loss (official 0.1).
        student_temp / center_momentum: of both losses (official 0.1 / 0.9).
    """

    name = "selfpatch"
    config_class = SelfPatchConfig

    def __init__(self, backbone_kwargs: dict, drop_path_rate: float = 0.1, head: dict | None = None,
                 patch_out_dim: int = 4096, k_num: int = 4, loss_weight: float = 0.1, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        PretrainMethod.__init__(self)  # DINO's networks are not built: SelfPatch has its own
        head = {"out_dim": 65536, **(head or {})}
        if not 1 <= k_num <= NEIGHBOURHOOD ** 2 - 1:
            raise ValueError(f"k_num {k_num}: choose 1 to {NEIGHBOURHOOD ** 2 - 1} of the 3x3 neighbours.")
        self.k_num, self.loss_weight = k_num, loss_weight
        vit = dict(backbone_kwargs, selfpatch_head=True, pos_interpolation="dino")
        # the official order: student ViT, teacher ViT, then each wrapper's heads (SelfPatch head, c_head, p_head)
        student_backbone = dino_vit_init_(build_backbone(drop_path_rate=drop_path_rate, **vit))
        teacher_backbone = dino_vit_init_(build_backbone(drop_path_rate=0.0, **vit))
        dim = student_backbone.embed_dim
        patch_head = {**head, "out_dim": patch_out_dim}
        self.student = SelfPatchNetwork(student_backbone, DINOHead(dim, **head), DINOHead(dim, **patch_head))
        teacher_head = {"norm_last_layer": True}
        self.teacher = SelfPatchNetwork(teacher_backbone, DINOHead(dim, **{**head, **teacher_head}),
                                        DINOHead(dim, **{**patch_head, **teacher_head}))
        self.teacher.load_state_dict(self.student.state_dict())  # the teacher starts as the student
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.dino_loss = SelfPatchLoss(head["out_dim"], patch_out_dim, student_temp, center_momentum)

    # -- the method's declarations -------------------------------------------------------------------------

    @staticmethod
    def backbone_kwargs(cfg: SelfPatchConfig) -> dict[str, Any]:
        return {**DINO.backbone_kwargs(cfg), "selfpatch_head": True}

    @classmethod
    def from_config(cls, cfg: SelfPatchConfig) -> "SelfPatch":
        head = dict(out_dim=cfg.out_dim, norm_last_layer=cfg.norm_last_layer, nlayers=cfg.head_layers,
                    hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim)
        return cls(cls.backbone_kwargs(cfg), cfg.drop_path, head, cfg.out_dim_selfpatch, cfg.k_num, cfg.loss_weight,
                   cfg.student_temp, cfg.center_momentum)

    @classmethod
    def check_config(cls, cfg: SelfPatchConfig, batch_per_process: int) -> None:
        super().check_config(cfg, batch_per_process)
        if cfg.use_bn_in_head:
            raise ConfigError("SelfPatch's DINO heads run on token tensors (batch x tokens x width), where the "
                              "official heads cannot use BatchNorm; drop --use-bn-in-head.")
        sizes = {"img_size": cfg.img_size, **({"local_crop_size": cfg.local_crop_size} if cfg.local_crops_number
                                              else {})}
        for name, size in sizes.items():
            if size // cfg.patch_size < NEIGHBOURHOOD:
                raise ConfigError(f"{name} {size} gives a {size // cfg.patch_size}x{size // cfg.patch_size} patch "
                                  f"grid; SelfPatch's 3x3 neighbourhoods need at least 3x3 patches: raise {name} to "
                                  f"{NEIGHBOURHOOD * cfg.patch_size} or more, or lower --patch-size.")

    def describe(self, cfg: SelfPatchConfig) -> str:
        return (super().describe(cfg).replace("DINO:", "SelfPatch:", 1).replace("head out", "image head out", 1)
                + f"; patch head out {cfg.out_dim_selfpatch}, top-{cfg.k_num} of 8 neighbours, patch loss x "
                  f"{cfg.loss_weight:g}")

    # -- one step -------------------------------------------------------------------------------------------

    def forward(self, views: list[torch.Tensor], values: DINOStepValues, timer: Timer = no_timer) -> StepOutput:
        """Teacher on every crop (no gradient; per patch the aggregate of its selected neighbours), student on
        every crop; the image loss (teacher's global crops vs the student's other crops) + ``loss_weight`` x the
        patch loss (each crop with itself); then both centres move."""
        with timer("teacher"), torch.no_grad():
            teacher_image, teacher_patches = self.teacher(views, k_num=self.k_num, timer=timer)
        with timer("student"):
            student_image, student_patches = self.student(views)
        with timer("loss"):
            global_rows = 2 * views[0].shape[0]
            image_loss, teacher_probs = self.dino_loss(student_image, teacher_image[:global_rows], values.teacher_temp,
                                                       len(views))
            patch_loss = self.dino_loss.patch_loss(student_patches, teacher_patches, values.teacher_temp)
            loss = image_loss + patch_loss * self.loss_weight
            self.dino_loss.update_center(teacher_image)  # every crop's, local ones included (official)
            self.dino_loss.update_patch_center(teacher_patches)
            entropy = torch.special.entr(teacher_probs).sum(dim=-1).mean()
        return StepOutput(loss, {"image_loss": image_loss.detach(), "patch_loss": patch_loss.detach(),
                                 "teacher_entropy": entropy.detach()})

    def after_backward(self, values: DINOStepValues) -> None:
        """During the first ``freeze_last_layer`` epochs neither DINO head's last layer gets a gradient (the
        official ``cancel_gradients_last_layer`` cancels every parameter named ``last_layer``)."""
        if values.last_layer_frozen:
            for head in (self.student.c_head, self.student.p_head):
                for p in head.last_layer.parameters():
                    p.grad = None
