"""The checkpoint layouts of the other methods' official code, mapped to timm's names.

DINO's and SelfPatch's training checkpoints (student / teacher wrappers with their projection heads, SelfPatch's
CaiT-style head), this code's own DINO / SelfPatch networks, and the official APS ViT (``base_encoder.*`` with a
``(T, 1, D)`` position table and no CLS position). :mod:`patchmix.weights.layout` calls these on any file it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from patchmix.weights.errors import WeightsError

__all__ = ["MethodLayout", "dino_to_timm", "our_network", "is_bare_selfpatch_backbone", "read_args",
           "method_from_file_name", "aps_to_timm"]


@dataclass
class MethodLayout:
    """A state dict recognised as DINO's or SelfPatch's: the backbone tensors under timm's names (SelfPatch:
    plus ``ca_head.*``), a classifier head if any, and what was done."""

    state_dict: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    method: str     # dino / selfpatch
    layout: str     # the layout in words
    notes: list[str]


# The heads of the official student / teacher wrappers (MultiCropWrapper): DINO's projection head ``head``;
# SelfPatch's DINO heads for the image vector (``c_head``) and the patch vectors (``p_head``).
_PROJECTION_HEADS = ("head.", "c_head.", "p_head.")
_DINO_HEAD_PARTS = ("head.mlp.", "head.last_layer.")


def _dropped(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    found = sorted({p for k in sd for p in prefixes if k.startswith(p)})
    return ", ".join(f"{p}*" for p in found)


def _cait_to_selfpatch(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SelfPatch model exported as timm's CaiT (``cls_token``, ``blocks_token_only.N``, ``norm``, layer scales
    of 1) back under SelfPatch's names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2"):
            if not torch.all(value == 1):
                raise WeightsError(f"{key} is not 1: a CaiT with layer scale is not a SelfPatch model (only a "
                                   f"SelfPatch model exported as CaiT, layer scales of 1, loads here).")
            continue
        if key == "cls_token" or key.startswith("norm."):
            key = "ca_head." + key
        elif key.startswith("blocks_token_only."):
            key = "ca_head.cls_blocks." + key[len("blocks_token_only."):]
        out[key] = value
    return out


def dino_to_timm(sd: dict[str, torch.Tensor]) -> MethodLayout | None:
    """DINO's and SelfPatch's layouts under timm's names, or None if ``sd`` is in neither.

    * the official student / teacher (``MultiCropWrapper``): ``backbone.*`` (the ViT, timm's names) and DINO's
      ``head.*``, or SelfPatch's ``ca_head.*`` (the SelfPatch head), ``c_head.*`` and ``p_head.*``: the backbone
      is kept (with ``ca_head.*``), the projection heads are dropped;
    * a flat SelfPatch state dict (the ViT's keys and ``ca_head.*``, e.g. ours): projection heads dropped,
      ``head.*`` kept as a classifier;
    * a SelfPatch model exported as timm's CaiT by this code (``blocks_token_only.*``);
    * a flat DINO ViT with its projection head (``head.mlp.*``, ``head.last_layer.*``): the head is dropped.
    """
    notes: list[str] = []
    if any(k.startswith("backbone.") for k in sd) and all(k.startswith(("backbone.", "ca_head.") + _PROJECTION_HEADS)
                                                           for k in sd):
        selfpatch = any(k.startswith("ca_head.") for k in sd)
        out = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        out.update({k: v for k, v in sd.items() if k.startswith("ca_head.")})
        dropped = _dropped(sd, _PROJECTION_HEADS)
        if selfpatch:
            notes.append("SelfPatch's wrapper: kept backbone.* (as the ViT) and ca_head.* (the SelfPatch head)"
                         + (f"; dropped {dropped} (its DINO heads for the image and patch vectors)" if dropped else ""))
            return MethodLayout(out, {}, "selfpatch", "backbone + SelfPatch head + DINO heads", notes)
        notes.append("DINO's wrapper: kept backbone.* (the ViT)"
                     + (f"; dropped {dropped} (the DINO head: projector, not part of the backbone)" if dropped else ""))
        return MethodLayout(out, {}, "dino", "backbone + DINO head", notes)
    if any(k.startswith("blocks_token_only.") for k in sd):
        notes.append("timm CaiT layout with layer scales of 1 (a SelfPatch model exported by this code): "
                     "cls_token, blocks_token_only.N, norm -> ca_head.{cls_token, cls_blocks.N, norm}")
        return MethodLayout(_cait_to_selfpatch(sd), {}, "selfpatch", "exported as timm CaiT by this code", notes)
    if "ca_head.cls_token" in sd:
        out = {k: v for k, v in sd.items() if not k.startswith(_PROJECTION_HEADS)}
        head = {k: v for k, v in sd.items() if k.startswith("head.")}
        dropped = _dropped(sd, ("c_head.", "p_head."))
        if dropped:
            notes.append(f"dropped {dropped} (SelfPatch's DINO heads: not part of the model)")
        return MethodLayout(out, head, "selfpatch", "ViT + SelfPatch head", notes)
    if "cls_token" in sd and any(k.startswith(_DINO_HEAD_PARTS) for k in sd):
        out = {k: v for k, v in sd.items() if not k.startswith("head.")}
        notes.append(f"dropped {_dropped(sd, ('head.',))} (the DINO head: projector, not part of the backbone)")
        return MethodLayout(out, {}, "dino", "ViT + DINO head", notes)
    return None


def our_network(sd: dict[str, torch.Tensor], encoder: str) -> tuple[dict[str, torch.Tensor], str]:
    """This code's DINO / SelfPatch pretraining state (``student.*``, ``teacher.*``, ``dino_loss.*``): the keys of
    one network without its prefix (the official wrapper's layout), the teacher unless ``encoder`` is
    ``student``; and which. Any other state dict is returned as it is, with ""."""
    if not (any(k.startswith("teacher.") for k in sd) and any(k.startswith("student.") for k in sd)):
        return sd, ""
    chosen = "student" if encoder == "student" else "teacher"
    return {k[len(chosen) + 1:]: v for k, v in sd.items() if k.startswith(chosen + ".")}, chosen


def is_bare_selfpatch_backbone(sd: dict[str, torch.Tensor]) -> bool:
    """A ViT without CLS token, final LayerNorm or SelfPatch head: SelfPatch's backbone on its own."""
    return ("pos_embed" in sd and "patch_embed.proj.weight" in sd and any(k.startswith("blocks.") for k in sd)
            and not any(k == "cls_token" or k.endswith(".cls_token") for k in sd)
            and not any(k.startswith(("norm.", "fc_norm.")) for k in sd))


def read_args(content: Any) -> dict[str, Any]:
    """The ``args`` entry of a DINO / SelfPatch training checkpoint (an ``argparse.Namespace``, which the reader
    returns as a dict of its plain attributes), else {}."""
    args = content.get("args") if isinstance(content, dict) else None
    return args if isinstance(args, dict) else {}


def method_from_file_name(path: Path) -> str:
    """DINO's released backbones (and this code's DINO exports) are named ``dino_*``: the one rule that gives a
    plain ViT file a method (for its head count) without a registry entry."""
    return "dino" if path.name.lower().startswith("dino_") else ""


def aps_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The official APS ViT's tensors under timm's names, or None if ``sd`` is not in APS's layout.

    APS's ViT (``module/model.py``: ``ViTEncoderProjHead`` in pretraining files, under ``base_encoder.``;
    ``Vit`` in fine-tuned files, no prefix) names its parts ``patchify`` (the patch Conv2d), ``pos_embedding``
    (T x 1 x D: one row per patch token, none for CLS), ``transformer.N`` (timm Blocks), ``layer_norm`` and
    ``fc`` (projector or classifier). They become ``patch_embed.proj``, ``pos_embed`` (1 x T x D), ``blocks.N``,
    ``norm`` and ``head``; ``cls_token`` keeps its name and other tensors (``predictor.*``) are kept as they are.
    """
    prefixes = {k[: -len("pos_embedding")] for k in sd if k.endswith("pos_embedding")}
    prefixes = {p for p in prefixes if f"{p}patchify.weight" in sd and f"{p}cls_token" in sd}
    if not prefixes:
        return None
    renames = (("patchify.", "patch_embed.proj."), ("transformer.", "blocks."), ("layer_norm.", "norm."),
               ("fc.", "head."))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None:
            rest = key[len(prefix):]
            if rest == "pos_embedding":
                if value.ndim != 3 or value.shape[1] != 1:
                    raise WeightsError(f"{key} has shape {list(value.shape)}; APS's position table is "
                                       f"(tokens, 1, dim).")
                key, value = prefix + "pos_embed", value.transpose(0, 1)
            else:
                for old, new in renames:
                    if rest.startswith(old):
                        key = prefix + new + rest[len(old):]
                        break
        out[key] = value
    return out
