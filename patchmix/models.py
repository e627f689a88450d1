"""ViT backbone (timm), MoCo-v3 heads and the PatchMix online / momentum encoder pair.

The module layout mirrors the official checkpoints, so their state dicts load without renaming::

    base_encoder.*        online ViT; its ``head`` is the 3-layer projector
    momentum_encoder.*    EMA copy of base_encoder (absent in the no-momentum variant)
    predictor.*           2-layer predictor on top of the online projector

The backbone is timm's ``VisionTransformer`` (CLS token after the final LayerNorm as the feature), so an exported
backbone loads into ``timm.create_model('vit_small_patch16_224', ...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

__all__ = ["ARCHS", "ArchSpec", "arch_spec", "build_backbone", "build_mlp", "cls_features", "encode", "PatchMixModel"]


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
        import difflib
        close = difflib.get_close_matches(arch, list(ARCHS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}.{hint}")
    spec = ARCHS[arch]
    spec = ArchSpec(embed_dim or spec.embed_dim, depth or spec.depth, num_heads or spec.num_heads)
    if spec.embed_dim % spec.num_heads:
        raise ValueError(f"embed_dim {spec.embed_dim} is not divisible by num_heads {spec.num_heads}.")
    return spec


def build_backbone(arch: str = "vit_small", img_size: int = 224, patch_size: int = 16,
                   drop_path_rate: float = 0.0, embed_dim: int = 0, depth: int = 0,
                   num_heads: int = 0) -> VisionTransformer:
    """timm ViT with the official PatchMix settings and MoCo-v3 initialisation, no classifier (``head`` is
    ``Identity``: ``model(x)`` returns the CLS token after the final LayerNorm).

    ``dynamic_img_size`` lets the same model see other resolutions (96-px local crops): timm then resamples
    the learned position table, and leaves it untouched at the native size.
    """
    spec = arch_spec(arch, embed_dim, depth, num_heads)
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}.")
    model = VisionTransformer(
        img_size=img_size, patch_size=patch_size, num_classes=0, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=drop_path_rate,
        weight_init="moco", dynamic_img_size=True, global_pool="token",
    )
    # MoCo v3 initialises the patch projection like a Linear layer of fan-in 3*p*p (timm's 'moco' mode keeps
    # the Conv2d default).
    proj = model.patch_embed.proj
    bound = math.sqrt(6.0 / float(proj.weight[0].numel() + proj.weight.shape[0]))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    return model


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


class PatchMixModel(nn.Module):
    """Online encoder + predictor, and a momentum (EMA) encoder for the keys.

    Args:
        backbone_kwargs: arguments of :func:`build_backbone` (arch, img_size, patch_size, sizes).
        drop_path_rate: stochastic depth of the online encoder (official 0.1; the momentum encoder has 0).
        proj_layers / pred_layers / hidden_dim / out_dim: MoCo-v3 heads (3 / 2 / 4096 / 256 officially).
        use_momentum: False builds the official ViT-Tiny variant: keys come from the online network itself,
            without gradient.
        fuse_backbone: run each encoder's backbone once on all its same-resolution inputs of a step.
    """

    def __init__(self, backbone_kwargs: dict, drop_path_rate: float = 0.1, proj_layers: int = 3,
                 pred_layers: int = 2, hidden_dim: int = 4096, out_dim: int = 256, use_momentum: bool = True,
                 fuse_backbone: bool = True) -> None:
        super().__init__()
        self.fuse_backbone = fuse_backbone
        self.base_encoder = build_backbone(drop_path_rate=drop_path_rate, **backbone_kwargs)
        embed_dim = self.base_encoder.embed_dim
        self.base_encoder.head = build_mlp(proj_layers, embed_dim, hidden_dim, out_dim)
        self.predictor = build_mlp(pred_layers, out_dim, hidden_dim, out_dim)
        self.momentum_encoder: VisionTransformer | None = None
        if use_momentum:
            self.momentum_encoder = build_backbone(drop_path_rate=0.0, **backbone_kwargs)
            self.momentum_encoder.head = build_mlp(proj_layers, embed_dim, hidden_dim, out_dim)
            for online, momentum in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
                momentum.data.copy_(online.data)
                momentum.requires_grad = False

    def compile_backbones(self) -> None:
        """``torch.compile`` the backbone of each encoder (the heads stay eager; state-dict keys are unchanged)."""
        for encoder in filter(None, (self.base_encoder, self.momentum_encoder)):
            encoder.forward_features = torch.compile(encoder.forward_features)

    @property
    def key_encoder(self) -> VisionTransformer:
        return self.momentum_encoder if self.momentum_encoder is not None else self.base_encoder

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """EMA of the online parameters: ``xi <- m * xi + (1 - m) * theta`` (buffers are not averaged)."""
        if self.momentum_encoder is None:
            return
        online = [p.detach() for p in self.base_encoder.parameters()]
        target = list(self.momentum_encoder.parameters())
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x1_mixed: torch.Tensor, x2_mixed: torch.Tensor,
                local: torch.Tensor | None = None, local_mixed: torch.Tensor | None = None,
                needs: frozenset[str] = frozenset({"q1", "q2_mixed", "k1", "k2", "k1_mixed"})
                ) -> dict[str, torch.Tensor]:
        """Queries (predictor outputs, with gradient) and keys (projector outputs, no gradient).

        ``needs`` names the outputs the active loss terms use; passes nobody needs are skipped.
        ``local`` / ``local_mixed`` are the V local crops concatenated along the batch (one head call each).
        """
        out: dict[str, torch.Tensor] = {}
        online_names = [n for n in ("q1", "q2_mixed") if n in needs]
        online_inputs = {"q1": x1, "q2_mixed": x2_mixed}
        if local is not None:
            online_names.append("local")
            online_inputs["local"] = local
        if local_mixed is not None:
            online_names.append("local_mixed")
            online_inputs["local_mixed"] = local_mixed
        projections = encode(self.base_encoder, [online_inputs[n] for n in online_names], self.fuse_backbone)
        for name, projection in zip(online_names, projections):
            out[name] = self.predictor(projection)

        key_inputs = {"k1": x1, "k2": x2, "k1_mixed": x1_mixed}
        key_names = [n for n in ("k1", "k2", "k1_mixed") if n in needs]
        if self.momentum_encoder is None and "k1" in key_names and "q1" in online_names:
            # No-momentum variant: the key of view 1 is the (detached) projection of the gradient pass.
            out["k1"] = projections[online_names.index("q1")].detach()
            key_names.remove("k1")
        if key_names:
            with torch.no_grad():
                keys = encode(self.key_encoder, [key_inputs[n] for n in key_names], self.fuse_backbone)
            out.update(zip(key_names, keys))
        return out
