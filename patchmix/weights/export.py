"""Export of loaded weights as a plain timm backbone that loads without this code.

Writes the backbone as ``.pth`` (with a SHA-256 suffix torch.hub checks) and ``.safetensors`` plus a JSON record
holding the ``timm.create_model`` call that rebuilds it; timm's own ViT sizes differ from PatchMix's (ViT-S:
6 heads vs 12), so :func:`timm_model_name` works out the arguments that are needed. APS's ViT has LayerNorms of
eps 1e-5, which timm's keyword arguments cannot name as a string: it is exported as timm's CLIP ViT definition
(whose norm has that eps) with ``pre_norm=False``, plus ``qkv_bias=False, no_embed_class=True``. DINO's ViTs are
timm's own (``vit_small_patch16_224`` has DINO's 6 heads).

A SelfPatch model (no CLS token; its feature is the SelfPatch head's class-attention aggregate of the patch
tokens) is exported as timm's **CaiT**, which has exactly that structure: patch tokens with a position table of
their own, ViT blocks, then a class token updated by class-attention blocks over ``[class token, patch tokens]``
and a final LayerNorm read at the class token. CaiT's layer scales are set to 1 (SelfPatch has none: ``gamma_*``
tensors of ones are written) and its talking-heads attention is replaced by timm's plain ViT ``Attention``
(``attn_block=timm.models.vision_transformer.Attention``, a Python object in the printed call). Names:
``ca_head.cls_token`` -> ``cls_token``, ``ca_head.cls_blocks.N`` -> ``blocks_token_only.N``, ``ca_head.norm`` ->
``norm``; the rest keeps its names. ``model(x)`` of that CaiT is the SelfPatch image vector.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from patchmix.checkpoint import save_checkpoint
from patchmix.data import IMAGENET_MEAN, IMAGENET_STD
from patchmix.models import ARCHS
from patchmix.weights.layout import LoadedWeights

_TIMM_DEFAULT_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12}
# timm's CLIP ViT-B/16 image tower: LayerNorm eps 1e-5 (the others 1e-6), pre-norm and qkv bias switched on.
_CLIP_NAME, _CLIP_SIZES = "vit_base_patch16_clip_224", (768, 12, 12)
# timm's CaiT-S24 (the SelfPatch form): width, depth, heads; 2 class-attention blocks, LayerNorm eps 1e-6.
_CAIT_NAME, _CAIT_SIZES = "cait_s24_224", (384, 24, 8)
# Arguments of the CaiT form that are Python objects, by import path (the JSON record keeps them as strings).
_CAIT_OBJECTS = {"attn_block": "timm.models.vision_transformer.Attention"}


def selfpatch_to_cait(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SelfPatch model's tensors (``ca_head.*``) under the names of timm's CaiT, with layer scales of 1."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("ca_head."):
            key = key[len("ca_head."):]
            if key.startswith("cls_blocks."):
                key = "blocks_token_only." + key[len("cls_blocks."):]
        out[key] = value
    dim = state_dict["pos_embed"].shape[-1]
    blocks = sorted({".".join(k.split(".")[:2]) for k in out if k.startswith(("blocks.", "blocks_token_only."))})
    for block in blocks:
        out[f"{block}.gamma_1"] = torch.ones(dim, dtype=state_dict["pos_embed"].dtype)
        out[f"{block}.gamma_2"] = torch.ones(dim, dtype=state_dict["pos_embed"].dtype)
    return out


def timm_objects(backbone: dict[str, Any]) -> dict[str, str]:
    """Arguments of the ``timm.create_model`` call that are Python objects, as import paths (SelfPatch: CaiT's
    plain attention)."""
    return dict(_CAIT_OBJECTS) if backbone.get("selfpatch_head") else {}


def timm_model_name(backbone: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A timm model name and the keyword arguments that make it this backbone (as few as needed).

    timm's ViT-S has 6 heads, PatchMix's 12: for vit_small, ``num_heads=12`` is always among the arguments.
    A backbone with LayerNorm eps 1e-5 (APS) is timm's CLIP ViT-B/16 definition with ``pre_norm=False`` and
    its sizes; any other eps than 1e-6 and 1e-5 cannot be named (``norm_layer`` needs a Python object): see
    :func:`timm_usage`. A SelfPatch model is timm's CaiT-S24 definition with ``init_values=1.0`` and its sizes,
    plus the Python object of :func:`timm_objects`.
    """
    eps = backbone.get("norm_eps", 1e-6)
    kwargs: dict[str, Any] = {}
    if backbone.get("selfpatch_head"):
        name = _CAIT_NAME
        dim, depth, heads = _CAIT_SIZES
        kwargs["init_values"] = 1.0  # layer scale 1: CaiT's blocks compute SelfPatch's
    elif eps == 1e-5:
        name = _CLIP_NAME
        dim, depth, heads = _CLIP_SIZES
        kwargs["pre_norm"] = False
    else:
        arch = backbone["arch"] if backbone["arch"] in ARCHS else "vit_tiny"
        name = f"{arch}_patch16_224"
        dim, depth, heads = ARCHS[arch].embed_dim, ARCHS[arch].depth, _TIMM_DEFAULT_HEADS[arch]
    if backbone["embed_dim"] != dim:
        kwargs["embed_dim"] = backbone["embed_dim"]
    if backbone["depth"] != depth:
        kwargs["depth"] = backbone["depth"]
    if backbone["num_heads"] != heads:
        kwargs["num_heads"] = backbone["num_heads"]
    if backbone["patch_size"] != 16:
        kwargs["patch_size"] = backbone["patch_size"]
    if backbone["img_size"] != 224:
        kwargs["img_size"] = backbone["img_size"]
    if not backbone.get("qkv_bias", True):
        kwargs["qkv_bias"] = False
    if not backbone.get("pos_embed_cls", True) and not backbone.get("selfpatch_head"):
        kwargs["no_embed_class"] = True
    return name, kwargs


def timm_usage(backbone: dict[str, Any], file: str) -> str:
    """The ``timm.create_model(...)`` call (Python source) that builds ``backbone`` and loads ``file``."""
    name, kwargs = timm_model_name(backbone)
    call_kwargs = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    call_kwargs += "".join(f", {k}={v}" for k, v in timm_objects(backbone).items())
    eps = backbone.get("norm_eps", 1e-6)
    if eps != 1e-6 and name != _CLIP_NAME:
        call_kwargs += f", norm_layer=functools.partial(torch.nn.LayerNorm, eps={eps!r})"
    size = backbone["img_size"]
    return (f"timm.create_model({name!r}, pretrained=True, num_classes=0{call_kwargs}, "
            f"pretrained_cfg_overlay=dict(file={file!r}, mean={IMAGENET_MEAN}, std={IMAGENET_STD}, "
            f"input_size=(3, {size}, {size})))")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_backbone(loaded: LoadedWeights, out_dir: str | os.PathLike, name: str = "") -> dict[str, Any]:
    """Write ``loaded``'s backbone as a plain timm state dict: ``NAME-<sha256[:8]>.pth`` (the hash suffix lets
    ``torch.hub`` check downloads), ``NAME.safetensors`` (architecture in its metadata) and ``NAME.json``.

    Returns the JSON record, which also holds the ``timm.create_model`` call that loads the files.
    """
    from safetensors.torch import save_file  # imported here: only export writes .safetensors files

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = loaded.backbone
    prefix = loaded.method if loaded.method in ("patchmix", "aps", "dino", "selfpatch") else "patchmix"
    name = name or f"{prefix}_{b['arch'] if b['arch'] in ARCHS else 'vit'}_p{b['patch_size']}_{b['img_size']}"
    selfpatch = bool(b.get("selfpatch_head"))
    state = selfpatch_to_cait(loaded.state_dict) if selfpatch else loaded.state_dict
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    tmp = save_checkpoint(tensors, out / f".{name}.pth.partial")
    digest = _sha256(tmp)
    pth = out / f"{name}-{digest[:8]}.pth"
    os.replace(tmp, pth)
    st = out / f"{name}.safetensors"
    st_tmp = out / f".{name}.safetensors.partial"
    save_file(tensors, str(st_tmp), metadata={"patchmix_backbone": json.dumps(b), "format": "pt"})
    os.chmod(st_tmp, pth.stat().st_mode & 0o777)  # same permissions as the .pth (safetensors writes 0600)
    os.replace(st_tmp, st)
    timm_name, timm_kwargs = timm_model_name(b)
    record = {"backbone": b, "source": loaded.source, "format": loaded.kind, "encoder": loaded.encoder,
              "files": {"pth": pth.name, "safetensors": st.name}, "sha256": digest,
              "timm_model": timm_name, "timm_kwargs": timm_kwargs, "timm_objects": timm_objects(b),
              "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
              "feature": ("the SelfPatch image vector: CaiT's class token after its class-attention blocks and "
                          "final LayerNorm (num_classes=0)" if selfpatch else
                          "CLS token after the final LayerNorm (num_classes=0)"),
              "usage": timm_usage(b, str(pth))}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
