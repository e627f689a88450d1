"""DINO's networks and loss, shared by DINO and SelfPatch: the DINO head (with its weight-normalised last layer in
the official key layout), DINO's ViT initialisation, the multi-crop network (backbone once per resolution, head
once), and the loss with its centre. The method itself, its views and schedules are :mod:`patchmix.methods.dino`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from patchmix.distributed import get_world_size, is_distributed
from patchmix.models import cls_features

__all__ = ["WeightNormLinear", "DINOHead", "dino_vit_init_", "same_size_runs", "MultiCropNetwork", "DINOLoss",
           "update_center_"]


# ----------------------------------------------------------------------------------------------------------
# Networks


class WeightNormLinear(nn.Module):
    """A bias-free Linear layer with weight normalisation over each output row: ``W = g * v / ||v||``.

    The parameters are those of ``torch.nn.utils.weight_norm(nn.Linear(...), dim=0)`` under the same names,
    ``weight_g`` ``(out, 1)`` and ``weight_v`` ``(out, in)``, so official DINO checkpoints load and our state dicts
    have their layout; the weight is computed by the same kernel (``torch._weight_norm``). Unlike the hook-based
    ``weight_norm`` (deprecated in torch 2.x, and its modules cannot be deep-copied) and the parametrisation one
    (which saves ``parametrizations.weight.original0/1``), this keeps the official keys and is a plain module.
    Initialised as the official last layer: ``v`` with nn.Linear's default, ``g`` = 1.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_g = nn.Parameter(torch.empty(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default init
        nn.init.ones_(self.weight_g)

    @property
    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


class DINOHead(nn.Module):
    """DINO's projection head: an MLP (``nlayers`` Linear layers, GELU between them, optional BatchNorm) to a
    bottleneck, L2 normalisation, and a weight-normalised bias-free last layer to ``out_dim`` prototypes.

    Keys as the official head: ``mlp.0, mlp.2, mlp.4`` (``mlp.0, mlp.1, mlp.3, mlp.4, mlp.6`` with BatchNorm;
    ``mlp`` itself for one layer), ``last_layer.weight_g``, ``last_layer.weight_v``. The MLP's Linear layers get
    a truncated normal (std 0.02) and zero biases; ``norm_last_layer`` freezes ``weight_g`` (rows of norm 1).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            for index in range(nlayers):
                last = index == nlayers - 1
                layers.append(nn.Linear(in_dim if index == 0 else hidden_dim, bottleneck_dim if last else hidden_dim))
                if not last:
                    layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                    layers.append(nn.GELU())
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def dino_vit_init_(vit: VisionTransformer) -> VisionTransformer:
    """DINO's ViT initialisation (its ``vision_transformer.py``): truncated normal (std 0.02) for the position
    table, the CLS token and every Linear weight, zero Linear biases, LayerNorms at (1, 0), and PyTorch's default
    for the patch-embedding convolution. A ViT without CLS token (SelfPatch's) is initialised the same way."""
    trunc_normal_(vit.pos_embed, std=0.02)
    if vit.cls_token is not None:
        trunc_normal_(vit.cls_token, std=0.02)
    for module in vit.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    vit.patch_embed.proj.reset_parameters()
    return vit


def same_size_runs(crops: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of consecutive crops of the same size (DINO's multi-crop grouping: the
    global crops together, the local crops together)."""
    runs, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
            end += 1
        runs.append((start, end))
        start = end
    return runs


class MultiCropNetwork(nn.Module):
    """A backbone and a head seen as one network on a list of crops (DINO's multi-crop wrapper).

    The backbone runs once per run of consecutive crops of the same size (the 2 global crops together, the local
    crops together); the CLS features are concatenated in crop order and the head runs ONCE on all of them (which
    matters for a BatchNorm head). The output has ``len(crops) * B`` rows, crop by crop.
    """

    def __init__(self, backbone: VisionTransformer, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        encode = cls_features(self.backbone)
        features = []
        for start, end in same_size_runs(crops):
            batch = torch.cat(list(crops[start:end])) if end - start > 1 else crops[start]
            features.append(encode(batch))
        return torch.cat(features) if len(features) > 1 else features[0]

    def forward(self, crops: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        return self.head(self.features(crops))


# ----------------------------------------------------------------------------------------------------------
# Loss


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened softmax of each global crop and the student's
    softmax of every other crop, averaged over those pairs; and the centre of the teacher outputs (a buffer,
    ``center``, so checkpoints keep it)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probabilities(self, teacher_output: torch.Tensor, teacher_temp: float,
                              center: torch.Tensor | None = None) -> torch.Tensor:
        """``softmax((t - center) / teacher_temp)`` (float32, no gradient); ``center``: another centre than
        :attr:`center` (SelfPatch's patch centre)."""
        center = self.center if center is None else center
        return F.softmax((teacher_output.detach().float() - center) / teacher_temp, dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temp: float,
                num_crops: int, num_teacher_crops: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """``student_output``: ``(num_crops * B, K)``, crop by crop; ``teacher_output``: ``(num_teacher_crops * B,
        K)``, the teacher's crops being the student's first ones. Returns the loss and the teacher probabilities.
        Pair (teacher crop i, student crop j) counts when ``i != j``: ``num_teacher_crops * (num_crops - 1)`` pairs.
        The centre is NOT updated here: call :meth:`update_center` after the loss, as the official code does."""
        student_log_probs = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(num_crops)
        teacher_probs = self.teacher_probabilities(teacher_output, teacher_temp)
        total, pairs = student_output.new_zeros((), dtype=torch.float32), 0
        for i, q in enumerate(teacher_probs.chunk(num_teacher_crops)):
            for j, log_p in enumerate(student_log_probs):
                if j == i:
                    continue
                total = total + torch.sum(-q * log_p, dim=-1).mean()
                pairs += 1
        return total / pairs, teacher_probs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``center <- m * center + (1 - m) * mean of the teacher outputs of every process`` (one all-reduce)."""
        update_center_(self.center, teacher_output.detach().float().sum(dim=0, keepdim=True),
                       teacher_output.shape[0], self.center_momentum)


@torch.no_grad()
def update_center_(center: torch.Tensor, batch_sum: torch.Tensor, count: int, momentum: float) -> None:
    """``center <- momentum * center + (1 - momentum) * batch_sum / count``, where ``batch_sum`` (a sum of teacher
    outputs, shaped like ``center``) and ``count`` (how many outputs it sums) are totalled over every process
    first (one all-reduce)."""
    if is_distributed():
        dist.all_reduce(batch_sum)
        count *= get_world_size()
    center.copy_(center * momentum + (batch_sum / count) * (1 - momentum))
