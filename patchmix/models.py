"""The building blocks the methods share: the ViT backbone (timm), MoCo-v3 MLP heads, CLS features.

The backbone is timm's ``VisionTransformer`` (CLS token after the final LayerNorm as the feature), so an exported
backbone loads into ``timm.create_model('vit_small_patch16_224', ...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.models.vision_transformer import VisionTransformer

from patchmix.config import suggest
from patchmix.selfpatch_head import SelfPatchViT

__all__ = ["ARCHS", "ArchSpec", "arch_spec", "build_backbone", "build_mlp", "cls_features", "encode",
           "DINOPositionViT", "DINOPositionSelfPatchViT", "dino_resample_pos_embed"]


@dataclass(frozen=True)
class ArchSpec:
    embed_dim: int
    depth: int
    num_heads: int


# Heads as in the official code and its released weights: ViT-S uses 12 heads (the paper's Table 8 says 6, but
# its Appendix E shows 12 attention maps and the checkpoints only compute the intended function with 12).
ARCHS: dict[str, ArchSpec] = {
    "vit_tiny": ArchSpec(192, 12, 3),
    "vit_small": ArchSpec(384, 12, 12),
    "vit_base": ArchSpec(768, 12, 12),
}


def arch_spec(arch: str, embed_dim: int = 0, depth: int = 0, num_heads: int = 0) -> ArchSpec:
    """Look up an architecture; non-zero arguments override its width, depth or head count."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}.{suggest(arch, list(ARCHS))}")
    spec = ARCHS[arch]
    spec = ArchSpec(embed_dim or spec.embed_dim, depth or spec.depth, num_heads or spec.num_heads)
    if spec.embed_dim % spec.num_heads:
        raise ValueError(f"embed_dim {spec.embed_dim} is not divisible by num_heads {spec.num_heads}.")
    return spec


def build_backbone(arch: str = "vit_small", img_size: int = 224, patch_size: int = 16,
                   drop_path_rate: float = 0.0, embed_dim: int = 0, depth: int = 0,
                   num_heads: int = 0, qkv_bias: bool = True, norm_eps: float = 1e-6,
                   pos_embed_cls: bool = True, selfpatch_head: bool = False,
                   pos_interpolation: str = "timm") -> VisionTransformer:
    """timm ViT with the official PatchMix settings and MoCo-v3 initialisation, no classifier (``head`` is
    ``Identity``: ``model(x)`` returns the CLS token after the final LayerNorm).

    ``dynamic_img_size`` lets the same model see other resolutions (96-px local crops): timm then resamples
    the learned position table, and leaves it untouched at the native size.

    The last four options (plain values, stored with the sizes in checkpoints) describe ViTs of other codes;
    their defaults are PatchMix's. ``qkv_bias``: a bias on the query/key/value projection. ``norm_eps``: the
    epsilon of every LayerNorm. ``pos_embed_cls``: the position table has a row for the CLS token; False
    (timm's ``no_embed_class=True``) gives a table of the patch tokens only, added to them before the CLS
    token is prepended. APS's ViT: ``qkv_bias=False, norm_eps=1e-5, pos_embed_cls=False``.
    ``selfpatch_head``: SelfPatch's ViT, a :class:`patchmix.selfpatch_head.SelfPatchViT` (no CLS token, no final
    LayerNorm, the SelfPatch head ``ca_head`` aggregating all patch tokens into the feature that ``model(x)``
    returns in place of the CLS token).

    ``pos_interpolation`` says how the position table meets inputs of another size (local crops): ``timm``
    (its resampling, antialiased) or ``dino`` (:class:`DINOPositionViT`, or :class:`DINOPositionSelfPatchViT` with
    ``selfpatch_head``: DINO's bicubic scaling with the +0.1 offset, as DINO and SelfPatch). It changes no weight
    and is not stored with the sizes: at the native size both add the table as it is.
    """
    spec = arch_spec(arch, embed_dim, depth, num_heads)
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}.")
    options: dict = {}
    if norm_eps != 1e-6:  # timm's default LayerNorm has eps 1e-6
        options["norm_layer"] = partial(LayerNorm, eps=float(norm_eps))
    if not pos_embed_cls:
        options["no_embed_class"] = True
    if pos_interpolation not in ("timm", "dino"):
        raise ValueError(f"pos_interpolation must be 'timm' or 'dino', not {pos_interpolation!r}.")
    if pos_interpolation == "dino" and not pos_embed_cls and not selfpatch_head:
        raise ValueError("pos_interpolation='dino' needs a position row for the CLS token (pos_embed_cls=True).")
    if selfpatch_head:
        vit_class = DINOPositionSelfPatchViT if pos_interpolation == "dino" else SelfPatchViT
    else:
        vit_class = DINOPositionViT if pos_interpolation == "dino" else VisionTransformer
    if not selfpatch_head:
        options["global_pool"] = "token"
    model = vit_class(
        img_size=img_size, patch_size=patch_size, num_classes=0, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, mlp_ratio=4.0, qkv_bias=bool(qkv_bias), drop_path_rate=drop_path_rate,
        weight_init="moco", dynamic_img_size=True, **options,
    )
    # MoCo v3 initialises the patch projection like a Linear layer of fan-in 3*p*p (timm's 'moco' mode keeps
    # the Conv2d default).
    proj = model.patch_embed.proj
    bound = math.sqrt(6.0 / float(proj.weight[0].numel() + proj.weight.shape[0]))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    return model


def dino_resample_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, prefix_tokens: int = 1) -> torch.Tensor:
    """The position table ``(1, prefix_tokens + N, D)`` (the CLS row first, a square grid of ``N`` patches) for a
    grid of ``rows x cols`` patches, as DINO resamples it: unchanged when the grid is the table's own square grid;
    otherwise the CLS row is kept and the patch rows are scaled bicubically by ``(rows + 0.1) / sqrt(N)`` and
    ``(cols + 0.1) / sqrt(N)`` (a scale factor, not a target size: the +0.1 keeps the floor of the output size at
    ``rows x cols`` despite rounding; sample positions follow from that factor, and there is no antialiasing).
    ``prefix_tokens=0``: a table of the patch tokens only (SelfPatch's ViT, which resamples it the same way)."""
    num_patches, dim = pos_embed.shape[1] - prefix_tokens, pos_embed.shape[2]
    if rows * cols == num_patches and rows == cols:
        return pos_embed
    side = math.sqrt(num_patches)
    grid = pos_embed[:, prefix_tokens:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
    if tuple(grid.shape[-2:]) != (rows, cols):
        raise ValueError(f"cannot resample a {int(side)}x{int(side)} position table to {rows}x{cols}.")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos_embed[:, :prefix_tokens], grid], dim=1) if prefix_tokens else grid


class DINOPositionViT(VisionTransformer):
    """timm's ViT whose position table meets other input sizes as in DINO (:func:`dino_resample_pos_embed`)
    instead of through timm's antialiased resampling. Same parameters and state-dict keys as its base class.
    Needs ``dynamic_img_size=True``, a CLS token with its own position row, and no register tokens."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.dynamic_img_size or self.no_embed_class or self.cls_token is None or self.reg_token is not None
                or self.pos_embed is None):
            return super()._pos_embed(x)
        batch, rows, cols, dim = x.shape
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, rows * cols, dim)], dim=1)
        return self.pos_drop(x + dino_resample_pos_embed(self.pos_embed, rows, cols))


class DINOPositionSelfPatchViT(SelfPatchViT):
    """SelfPatch's ViT (no CLS token) whose position table meets other input sizes as in the official SelfPatch
    ViT (``interpolate_pos_encoding``: DINO's resampling, :func:`dino_resample_pos_embed`, of a table without a
    CLS row) instead of through timm's antialiased resampling. Same parameters and state-dict keys as its base
    class. Needs ``dynamic_img_size=True`` and no register tokens."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.dynamic_img_size or self.cls_token is not None or self.reg_token is not None
                or self.pos_embed is None):
            return super()._pos_embed(x)
        batch, rows, cols, dim = x.shape
        table = dino_resample_pos_embed(self.pos_embed, rows, cols, prefix_tokens=0)
        return self.pos_drop(x.reshape(batch, rows * cols, dim) + table)


def build_mlp(num_layers: int, input_dim: int, hidden_dim: int, output_dim: int,
              last_batchnorm: bool = True) -> nn.Sequential:
    """MoCo-v3 MLP: (Linear-BN-ReLU) x (n-1), Linear, BN without affine. Linear layers have no bias.

    Layer indices match the official checkpoints (projector ``head.0 .. head.7``, predictor ``0 .. 4``).
    """
    layers: list[nn.Module] = []
    for index in range(num_layers):
        in_dim = input_dim if index == 0 else hidden_dim
        last = index == num_layers - 1
        out_dim = output_dim if last else hidden_dim
        layers.append(nn.Linear(in_dim, out_dim, bias=False))
        if not last:
            layers += [nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)]
        elif last_batchnorm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def cls_features(encoder: VisionTransformer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature of every protocol: ``images -> CLS token after the final LayerNorm`` (no head)."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        return encoder.forward_head(encoder.forward_features(images), pre_logits=True)
    return encode


def encode(encoder: VisionTransformer, inputs: list[torch.Tensor], fuse: bool = True) -> list[torch.Tensor]:
    """Project every input with its own head call, running the backbone once per resolution when ``fuse``.

    Concatenating the inputs of one encoder changes nothing in the backbone (LayerNorm and attention are
    per-sample; drop path draws per-sample masks from the same distribution), while the BatchNorm heads must
    still see each input as its own batch, as in the official code.
    """
    if fuse and len(inputs) > 1:
        features: list[torch.Tensor] = [None] * len(inputs)  # type: ignore[list-item]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, x in enumerate(inputs):
            by_shape.setdefault(tuple(x.shape[1:]), []).append(index)
        for indices in by_shape.values():
            batch = torch.cat([inputs[i] for i in indices]) if len(indices) > 1 else inputs[indices[0]]
            chunks = cls_features(encoder)(batch).split([inputs[i].shape[0] for i in indices])
            for i, chunk in zip(indices, chunks):
                features[i] = chunk
    else:
        features = [cls_features(encoder)(x) for x in inputs]
    return [encoder.head(f) for f in features]
