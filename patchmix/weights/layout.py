"""From the content of a weights file to a plain timm backbone state dict and the ViT to build for it.

Finds the state dict in any supported checkpoint layout, strips the DDP / torch.compile prefixes, maps the
official APS ViT's names to timm's, takes the backbone (and SelfPatch head) out of DINO's and SelfPatch's
student / teacher wrappers, picks the encoder of a pretraining file, splits off a classifier head, infers the
ViT's sizes from the tensor shapes and checks that the tensors fit the ViT asked for. :func:`load_weights` does
all of it, from a path, URL or released name, and returns a :class:`LoadedWeights`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from patchmix.models import ARCHS, build_backbone
from patchmix.weights.errors import WeightsError, WeightsMismatchError
from patchmix.weights.fetch import resolve_weights
from patchmix.weights.method_layouts import (
    aps_to_timm,
    dino_to_timm,
    is_bare_selfpatch_backbone,
    method_from_file_name,
    our_network,
    read_args,
)
from patchmix.weights.registry import METHOD_BACKBONE_OPTIONS, METHOD_HEADS, METHOD_LABELS, ReleasedWeights
from patchmix.weights.unpickle import read_weights_file


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


_CONTAINER_KEYS = ("model", "state_dict", "module", "model_ema", "state_dict_ema", "teacher")


def _find_state_dict(content: Any, key: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if key:
        if not isinstance(content, dict) or key not in content:
            keys = ", ".join(map(str, content)) if isinstance(content, dict) else type(content).__name__
            raise WeightsError(f"{path} has no entry {key!r} (--checkpoint-key); it holds: {keys}.")
        if not _is_state_dict(content[key]):
            raise WeightsError(f"entry {key!r} of {path} is not a dict of tensors.")
        return content[key], key
    if _is_state_dict(content):
        return content, ""
    if isinstance(content, dict):
        for candidate in _CONTAINER_KEYS:
            if _is_state_dict(content.get(candidate)):
                return content[candidate], candidate
        keys = ", ".join(map(str, content))
        raise WeightsError(f"no state dict found in {path}: it holds {keys}. Name the entry with "
                           f"--checkpoint-key.")
    raise WeightsError(f"{path} holds a {type(content).__name__}, not a checkpoint dict.")


def _strip_wrappers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


# build_backbone's options besides the sizes, with their defaults (PatchMix's ViT). A backbone dict holds an
# option only when it differs from its default, so PatchMix's dicts keep their six keys.
BACKBONE_OPTION_DEFAULTS: dict[str, Any] = {"qkv_bias": True, "norm_eps": 1e-6, "pos_embed_cls": True,
                                            "selfpatch_head": False}


def infer_backbone(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Sizes of a timm ViT read off its tensors: width, depth, patch size, image size (square), MLP ratio,
    whether the attention has a qkv bias, whether the position table has a row for the CLS token, whether a
    SelfPatch head (``ca_head.*``) forms the feature.

    ``arch`` is the named size with that width and depth, or None. The number of attention heads cannot be
    read off the shapes (qkv is one D x 3D matrix whatever the split), so it is not returned; nor can the
    LayerNorm epsilon.
    """
    try:
        proj = state_dict["patch_embed.proj.weight"]
        pos = state_dict["pos_embed"]
    except KeyError as error:
        raise WeightsError(f"not a ViT state dict: {error} is missing.") from error
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    rows = int(pos.shape[1])
    tokens, pos_embed_cls = rows - (1 if "cls_token" in state_dict else 0), True
    if tokens != rows and math.isqrt(tokens) ** 2 != tokens and math.isqrt(rows) ** 2 == rows:
        tokens, pos_embed_cls = rows, False  # a square grid of patch positions, none for the CLS token (APS)
    grid = math.isqrt(tokens)
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    arch = next((name for name, spec in ARCHS.items() if (spec.embed_dim, spec.depth) == (embed_dim, depth)), None)
    return {"arch": arch, "embed_dim": embed_dim, "depth": depth, "patch_size": patch,
            "img_size": grid * patch if grid * grid == tokens else None,
            "mlp_ratio": float(fc1.shape[0]) / embed_dim if fc1 is not None else None,
            "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict or "blocks.0.attn.qkv.weight" not in state_dict,
            "pos_embed_cls": pos_embed_cls, "selfpatch_head": "ca_head.cls_token" in state_dict}


def _describe_options(kwargs: dict[str, Any]) -> str:
    parts = []
    if not kwargs.get("qkv_bias", True):
        parts.append("no qkv bias")
    if kwargs.get("norm_eps", 1e-6) != 1e-6:
        parts.append(f"LayerNorm eps {kwargs['norm_eps']:g}")
    if not kwargs.get("pos_embed_cls", True):
        parts.append("no CLS position")
    if kwargs.get("selfpatch_head", False):
        parts.append("no CLS token: SelfPatch head over all patch tokens")
    return "; " + ", ".join(parts) if parts else ""


def _describe_backbone(kwargs: dict[str, Any], heads: str | None = None) -> str:
    arch = kwargs.get("arch")
    named = arch in ARCHS and (ARCHS[arch].embed_dim, ARCHS[arch].depth) == (kwargs["embed_dim"], kwargs["depth"])
    name = arch if named else "a custom ViT"
    img = f" at {kwargs['img_size']} px" if kwargs.get("img_size") else ""
    heads = heads if heads is not None else f"{kwargs['num_heads']} heads"
    return (f"{name}/{kwargs['patch_size']}{img} ({kwargs['embed_dim']}-d, {kwargs['depth']} blocks, {heads}"
            f"{_describe_options(kwargs)})")


@dataclass
class LoadedWeights:
    """What :func:`load_weights` found: a timm backbone state dict and how to build the model for it."""

    state_dict: dict[str, torch.Tensor]     # timm VisionTransformer keys, no head, no prefix
    backbone: dict[str, Any]                # build_backbone(**backbone): arch, img_size, patch_size, sizes, and
                                            # qkv_bias / norm_eps / pos_embed_cls where not the defaults
    head: dict[str, torch.Tensor]           # classifier tensors of linear / fine-tune files ("head.weight", ...)
    path: Path
    source: str
    kind: str                               # the file format, in words
    encoder: str = ""                       # which encoder of a pretraining file ("" for a plain ViT)
    released: ReleasedWeights | None = None
    heads_guessed: bool = False             # num_heads is the architecture's official value, not from the file
    notes: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)  # the file's non-tensor entries (epoch, config ...)
    method: str = ""                        # the method that trained it, where known: patchmix / aps / dino /
                                            # selfpatch

    @property
    def num_classes(self) -> int:
        weight = self.head.get("head.weight", self.head.get("head.1.weight"))
        return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 0

    def describe(self) -> str:
        lines = [f"weights: {self.source}" + (f" ({self.path})" if str(self.path) != self.source else ""),
                 f"  format: {self.kind}" + (f"; encoder: {self.encoder}" if self.encoder else ""),
                 f"  backbone: {_describe_backbone(self.backbone)}"
                 + ("; heads not stored in the file" if self.heads_guessed else "")]
        if self.num_classes:
            lines.append(f"  classifier head: {self.num_classes} classes")
        if self.released is not None:
            lines.append(f"  released: {self.released.name}, reported {self.released.numbers()}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """A JSON-able record for results.json / checkpoints."""
        return {"source": self.source, "path": str(self.path), "format": self.kind, "method": self.method,
                "encoder": self.encoder, "backbone": dict(self.backbone), "num_classes": self.num_classes,
                "released": self.released.name if self.released else None, "heads_guessed": self.heads_guessed,
                "notes": list(self.notes)}


def _split_layout(sd: dict[str, torch.Tensor], encoder: str, path: Path, ours: bool, notes: list[str],
                  aps: bool = False, label: str = "PatchMix", momentum_free: bool = False
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str, str]:
    """(backbone, head, encoder used, format) of a state dict of any supported layout (official APS files:
    already mapped to timm's names, ``aps`` set; ``momentum_free``: the method has no momentum encoder, so its
    absence needs no note)."""
    prefixes = sorted({k[: -len("cls_token")] for k in sd if k.endswith("cls_token")})
    encoders = [p[:-1] for p in prefixes if p in ("base_encoder.", "momentum_encoder.")]
    if encoders:
        chosen = encoder or "momentum_encoder"
        if chosen not in encoders:
            if (aps or momentum_free) and chosen == "momentum_encoder" and "base_encoder" in encoders:
                chosen = "base_encoder"  # APS trains without a momentum encoder
            elif chosen == "momentum_encoder" and "base_encoder" in encoders:
                notes.append("the checkpoint has no momentum encoder (trained with use_momentum=False, like the "
                             "official ViT-T recipe): using base_encoder")
                chosen = "base_encoder"
            else:
                raise WeightsError(f"{path} has no {chosen} (it has {', '.join(encoders)}); set --encoder.")
        prefix = chosen + "."
        fmt = (f"{label} pretraining checkpoint (this code)" if ours else
               "official APS pretraining checkpoint" if aps else "official PatchMix pretraining checkpoint")
        backbone = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if aps:
            notes.append(f"mapped APS's names to timm's (pos_embedding (T, 1, D) -> pos_embed (1, T, D), no CLS "
                         f"position); dropped {chosen}.fc.* (the projector) and predictor.*")
        elif any(k.startswith("head.") for k in backbone):
            notes.append(f"dropped {chosen}.head.* (the projector: not part of the backbone)")
        return ({k: v for k, v in backbone.items() if not k.startswith("head.")}, {}, chosen, fmt)
    if not prefixes:
        sample = ", ".join(list(sd)[:4])
        raise WeightsError(f"no ViT found in {path}: expected base_encoder.* / momentum_encoder.* (PatchMix "
                           f"pretraining) or cls_token, blocks.N.* (a ViT), found keys like {sample}.")
    if len(prefixes) > 1:
        named = [p[:-1] for p in prefixes if p]
        if encoder and encoder + "." in prefixes:
            prefixes = [encoder + "."]
        else:
            raise WeightsError(f"{path} holds several ViTs (prefixes {', '.join(named or prefixes)}); choose one "
                               f"with --encoder.")
    prefix = prefixes[0]
    vit = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    head = {k: v for k, v in vit.items() if k.startswith("head.")}
    backbone = {k: v for k, v in vit.items() if not k.startswith("head.")}
    if ours:
        fmt = "ViT classifier checkpoint (this code)" if head else "ViT backbone (this code)"
    elif aps:
        fmt = "official APS fine-tuned ViT (fc = classifier head)" if head else "official APS ViT"
        notes.append("mapped APS's names to timm's (pos_embedding (T, 1, D) -> pos_embed (1, T, D), no CLS "
                     "position" + (", fc -> head)" if head else ")"))
    else:
        fmt = "ViT with classifier head (official linear / fine-tune file, or timm)" if head else "ViT backbone"
    return backbone, head, prefix[:-1], fmt


def _summarise_keys(keys: list[str]) -> str:
    """``blocks.6-11.* (72 tensors), norm.weight``: whole blocks are collapsed into ranges."""
    blocks: dict[int, int] = {}
    others = []
    for key in keys:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
            blocks[int(parts[1])] = blocks.get(int(parts[1]), 0) + 1
        else:
            others.append(key)
    items = []
    if blocks:
        first, last = min(blocks), max(blocks)
        span = f"blocks.{first}.*" if first == last else f"blocks.{first}-{last}.*"
        if len(blocks) != last - first + 1:
            span = "blocks." + ",".join(map(str, sorted(blocks))) + ".*"
        items.append(f"{span} ({sum(blocks.values())} tensors)")
    items += others[:6] + ([f"and {len(others) - 6} more"] if len(others) > 6 else [])
    return ", ".join(items)


def _meta_shapes(kwargs: dict[str, Any]) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = build_backbone(**kwargs)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_fit(backbone: dict[str, torch.Tensor], kwargs: dict[str, Any], path: Path,
               inferred: dict[str, Any], requested: str, method: str = "patchmix") -> None:
    """Raise :class:`WeightsMismatchError` listing every tensor that does not fit the ViT of ``kwargs``."""
    expected = _meta_shapes(kwargs)
    wrong = [f"{k}: file {list(v.shape)} vs model {list(expected[k])}" for k, v in backbone.items()
             if k in expected and tuple(v.shape) != tuple(expected[k])]
    missing = [k for k in expected if k not in backbone]
    unexpected = [k for k in backbone if k not in expected]
    if not (wrong or missing or unexpected):
        return
    lines = wrong[:8] + ([f"... {len(wrong) - 8} more shape mismatches"] if len(wrong) > 8 else [])
    for label, keys in (("missing in the file", missing), ("not in the model", unexpected)):
        if keys:
            lines.append(f"{label}: {_summarise_keys(keys)}")
    held = dict(inferred)
    arch = held.get("arch")
    patchmix = method in ("", "patchmix") or method not in METHOD_HEADS
    heads_note = ("attention heads cannot be inferred from tensor shapes" +
                  (f"; the official value for {arch} is {ARCHS[arch].num_heads}" if arch and patchmix else
                   f"; {METHOD_LABELS[method]}'s official value for {arch} is {METHOD_HEADS[method][arch]}"
                   if arch else "") +
                  ("; ViT-S uses 12 in the released code and weights, the paper's table says 6"
                   if arch == "vit_small" and patchmix else ""))
    if _describe_options(held):
        heads_note += "; " + _describe_options(held)[2:]
    size = f" at {held['img_size']} px" if held.get("img_size") else ""
    name = arch or "a custom ViT"
    flags = (f"--arch {arch} " if arch else "") + f"--patch-size {held['patch_size']}"
    raise WeightsMismatchError(
        f"the weights in {path} do not fit the requested ViT {requested}:\n  " + "\n  ".join(lines) +
        f"\nThe file seems to hold {name}/{held['patch_size']}{size} ({held['embed_dim']}-d, {held['depth']} "
        f"blocks, mlp ratio {held['mlp_ratio']:g}; {heads_note}). Leave --arch/--patch-size unset to use the "
        f"file's own architecture, or pass {flags} (and --num-heads if it was trained with another head count).")


def load_weights(source: str, encoder: str = "momentum_encoder", checkpoint_key: str = "",
                 allow_pickle: bool = False, arch: str = "", patch_size: int = 0, num_heads: int = 0,
                 weights_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 resolved: tuple[Path, ReleasedWeights | None] | None = None) -> LoadedWeights:
    """Load any supported weights as a plain timm backbone state dict plus the ViT to build for it.

    Args:
        source: a path, a URL or a released name (see :func:`resolve_weights`).
        encoder: for pretraining files, ``momentum_encoder`` (the official choice; falls back to
            ``base_encoder`` with a note when the file has none) or ``base_encoder``; for files with several
            ViTs, the prefix to use.
        checkpoint_key: the entry holding the state dict (default: the file itself, ``model``, ``state_dict``...).
        allow_pickle: trust the file and let its pickled objects be built (runs code from the file).
        arch / patch_size / num_heads: override what the file says or implies (empty / 0: keep). A file that
            does not fit the resulting ViT raises :class:`WeightsMismatchError` naming what it holds.
        resolved: the result of :func:`resolve_weights` for ``source``, if already known (skips the lookup).

    The architecture comes, in this order, from the arguments, the checkpoint's ``backbone`` entry (ours),
    the registry (released files), the ``args.arch`` of a DINO / SelfPatch training checkpoint and the tensor
    shapes; attention heads, which shapes cannot reveal, default to the official value of the architecture for
    the file's method (PatchMix: ViT-T 3, ViT-S 12, ViT-B 12; APS, DINO, SelfPatch: ViT-S 6) and
    ``heads_guessed`` is set. The method comes from the layout (APS, DINO's and SelfPatch's wrappers, a SelfPatch
    head), the checkpoint, the registry, or, for a plain ViT file, its name (``dino_*``: DINO's release names).
    Official APS files (``pos_embedding``, ``patchify``, ``transformer.N``...) are mapped to timm's names and get
    APS's ViT options (no qkv bias, LayerNorm eps 1e-5, no CLS position). DINO / SelfPatch training checkpoints
    give the teacher unless ``checkpoint_key="student"``; their projection heads are dropped. SelfPatch models keep
    their SelfPatch head (``ca_head.*`` in the state dict, ``selfpatch_head=True`` in the backbone arguments):
    their feature is the head's aggregate of all patch tokens.
    """
    path, released = resolved or resolve_weights(source, weights_dir, cache_dir)
    content, notes = read_weights_file(path, allow_pickle)
    sd, used_key = _find_state_dict(content, checkpoint_key, path)
    ours = isinstance(content, dict) and ("format_version" in content or "backbone" in content)
    extra: dict[str, Any] = {}
    if isinstance(content, dict) and used_key:
        extra = {k: v for k, v in content.items() if isinstance(v, (int, float, str, bool))}
        if isinstance(content.get("config"), dict):
            extra["config"] = content["config"]
    stored_method = content.get("method", "") if isinstance(content, dict) else ""
    stored_method = stored_method if isinstance(stored_method, str) else ""
    plain, network = our_network(_strip_wrappers(sd), encoder) if ours else (_strip_wrappers(sd), "")
    aps_sd = aps_to_timm(plain)
    layout = dino_to_timm(plain) if aps_sd is None else None
    method = ("aps" if aps_sd is not None else layout.method if layout is not None else stored_method
              or (released.method if released else "") or method_from_file_name(path))
    label = METHOD_LABELS.get(stored_method, stored_method or "PatchMix")
    if layout is not None:
        backbone_sd, head = layout.state_dict, layout.head
        used_encoder = used_key if used_key in ("teacher", "student") else network
        what = METHOD_LABELS[layout.method]
        if network:
            kind = f"{what} pretraining checkpoint (this code; {network}: {layout.layout})"
            if network == "teacher" and encoder != "teacher":
                notes.append(f"the checkpoint holds a student and a teacher: using the teacher, as {what}'s "
                             f"evaluations do (--encoder student for the student)")
        elif used_encoder:
            kind = f"official {what} training checkpoint ({used_encoder}: {layout.layout})"
            if used_encoder == "teacher" and not checkpoint_key and "student" in content:
                notes.append(f"the checkpoint holds a student and a teacher: using the teacher, as {what}'s "
                             f"evaluations do (--checkpoint-key student for the student)")
        elif ours and "CaiT" not in layout.layout:
            kind = f"{what} ViT {'classifier ' if head else ''}checkpoint (this code)"
        else:
            kind = f"{what} state dict ({layout.layout})"
        notes += layout.notes
    else:
        if is_bare_selfpatch_backbone(plain):
            raise WeightsError(
                f"{path} holds a ViT without CLS token, final LayerNorm or SelfPatch head: SelfPatch's backbone "
                f"alone. Its image-level feature is formed by the SelfPatch head (ca_head.*: a query token and "
                f"class-attention blocks over the patch tokens), which this file does not contain; load a file "
                f"that has it (SelfPatch's training checkpoint.pth, or its teacher / student state dict).")
        backbone_sd, head, used_encoder, kind = _split_layout(aps_sd if aps_sd is not None else plain, encoder,
                                                              path, ours, notes, aps=aps_sd is not None, label=label,
                                                              momentum_free=method == "aps")
        if method == "dino" and not stored_method and released is None:
            notes.append(f"DINO's file naming ({path.name}): DINO's head counts are used (its vit_small has 6 "
                         f"heads; pass --num-heads for another count)")
    if any(k.startswith("module.") for k in sd):
        notes.append("removed the DDP prefix module.")
    args = read_args(content) if method in ("dino", "selfpatch") else {}
    args_arch = str(args.get("arch", "")).replace("deit", "vit")
    if args_arch and args_arch not in METHOD_HEADS[method]:
        raise WeightsError(f"{path} is a {METHOD_LABELS[method]} checkpoint of {args['arch']!r} (args.arch); only "
                           f"its ViTs ({', '.join(METHOD_HEADS[method])}) load here.")
    inferred = infer_backbone(backbone_sd)
    if args:
        extra["args"] = args
        if args_arch and ARCHS[args_arch].embed_dim != inferred["embed_dim"]:
            notes.append(f"args.arch is {args['arch']!r} ({ARCHS[args_arch].embed_dim}-d) but the tensors are "
                         f"{inferred['embed_dim']}-d: the head count is not taken from it")

    stored = content.get("backbone") if isinstance(content, dict) else None
    kwargs: dict[str, Any] = {"arch": inferred["arch"] or "vit_tiny", "img_size": inferred["img_size"],
                              "patch_size": inferred["patch_size"], "embed_dim": inferred["embed_dim"],
                              "depth": inferred["depth"], "num_heads": 0}
    # Options: what the tensors show (qkv bias, CLS position, SelfPatch head), then the method's ViT (the
    # LayerNorm epsilon, which no tensor shows), then what our checkpoints store.
    options = {k: inferred[k] for k in ("qkv_bias", "pos_embed_cls", "selfpatch_head")}
    if method in METHOD_BACKBONE_OPTIONS:
        options.update(METHOD_BACKBONE_OPTIONS[method])
    elif not (stored or method) and not options["qkv_bias"] and not options["pos_embed_cls"]:
        method = "aps"
        options.update(METHOD_BACKBONE_OPTIONS["aps"])
        notes.append("no qkv bias and no CLS position: the layout of APS's ViT, so its LayerNorm eps 1e-5 and "
                     "head counts are used (neither can be read off the tensors)")
    heads_guessed = False
    if isinstance(stored, dict) and {"embed_dim", "depth", "num_heads"} <= set(stored):
        kwargs.update({k: stored[k] for k in kwargs if k in stored})
        options.update({k: stored[k] for k in BACKBONE_OPTION_DEFAULTS if k in stored})
    elif released is not None and released.backbone_kwargs()["embed_dim"] == inferred["embed_dim"]:
        kwargs["num_heads"] = released.num_heads
    elif args_arch and ARCHS[args_arch].embed_dim == inferred["embed_dim"]:
        kwargs["num_heads"] = METHOD_HEADS[method][args_arch]
        notes.append(f"{kwargs['num_heads']} attention heads: the checkpoint's args.arch is {args['arch']!r}, "
                     f"which has {kwargs['num_heads']} heads in {METHOD_LABELS[method]}'s code")
    official_heads = METHOD_HEADS.get(method or "patchmix", METHOD_HEADS["patchmix"])
    if arch:
        if arch not in ARCHS:
            raise WeightsError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}.")
        kwargs.update(arch=arch, embed_dim=ARCHS[arch].embed_dim, depth=ARCHS[arch].depth,
                      num_heads=num_heads or official_heads[arch])
    if patch_size:
        if kwargs["img_size"]:
            kwargs["img_size"] = kwargs["img_size"] // kwargs["patch_size"] * patch_size
        kwargs["patch_size"] = patch_size
    if num_heads:
        kwargs["num_heads"] = num_heads
    if not kwargs["num_heads"]:
        named = kwargs["arch"] in ARCHS and ARCHS[kwargs["arch"]].embed_dim == kwargs["embed_dim"]
        if not named:
            raise WeightsError(f"{path} holds a {kwargs['embed_dim']}-d ViT, which is none of the named sizes, "
                               f"and the number of attention heads cannot be inferred from tensor shapes: pass "
                               f"--num-heads.")
        kwargs["num_heads"] = official_heads[kwargs["arch"]]
        heads_guessed = True
        whose = (f"{METHOD_LABELS[method]}'s official value" if method in METHOD_LABELS and method != "patchmix"
                 else "the official value")
        notes.append(f"attention heads cannot be inferred from tensor shapes: using {kwargs['num_heads']}, {whose} "
                     f"for {kwargs['arch']} (pass --num-heads if the file was trained otherwise)")
    if not kwargs["img_size"]:
        raise WeightsError(f"cannot tell the image size of {path}: its position table is not a square grid; "
                           f"non-square ViTs are not supported.")
    if kwargs["embed_dim"] % kwargs["num_heads"]:
        raise WeightsError(f"{kwargs['embed_dim']}-d is not divisible into {kwargs['num_heads']} heads; fix "
                           f"--num-heads.")
    kwargs.update({k: v for k, v in options.items() if v != BACKBONE_OPTION_DEFAULTS[k]})
    _check_fit(backbone_sd, kwargs, path, inferred, _describe_backbone(kwargs), method)
    return LoadedWeights(backbone_sd, kwargs, head, path, source, kind, used_encoder, released, heads_guessed,
                         notes, extra, method)
