"""The command line ``python -m patchmix.weights list|info|download|export``: :func:`main`.

At the top of the package's imports: it only parses arguments, calls the other modules and prints their
results; a :class:`WeightsError` becomes ``error: ...`` and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from patchmix.weights.errors import WeightsError
from patchmix.weights.export import export_backbone
from patchmix.weights.fetch import resolve_weights
from patchmix.weights.layout import LoadedWeights, load_weights
from patchmix.weights.registry import format_registry

# The help text of the command (what it was as the docstring of the old one-file module).
_DESCRIPTION = """\
One loader for every PatchMix weight file, the released weights by name, and export to plain timm backbones.

Wherever a script asks for weights (``--pretrained-weights``) it accepts

* a local file: our checkpoints at any stage (pretraining, linear probe, fine-tuning, exported backbones,
  ``.safetensors``); the official pretraining files (``{"state_dict": {base_encoder.*, momentum_encoder.*,
  predictor.*}, ...}``, with or without the DDP ``module.`` prefix, and ``last.pth = {"state_dict"}``); the
  official linear / fine-tuning files (``{"epoch", "arch", "state_dict", "acc_best", ...}`` and ``best.pth``,
  which is a whole pickled ``nn.Module``); the official APS files (pretraining: the raw state dict
  ``{base_encoder.{cls_token, pos_embedding, patchify, transformer.N, layer_norm, fc}, predictor.*}``;
  fine-tuning: a pickled ``Vit`` module), mapped to timm's names and built with APS's ViT options; DINO's
  training checkpoint ``checkpoint.pth`` (``{student: module.backbone.*, module.head.*; teacher: backbone.*,
  head.*; args; ...}``: the teacher, as DINO's evaluations, unless ``--checkpoint-key student``; the DINO head is
  dropped) and its released backbone files (plain timm state dicts); SelfPatch's training checkpoint and state
  dicts (``backbone.*`` without CLS token, ``ca_head.*`` = the SelfPatch head, whose aggregate of all patch
  tokens is the feature; its DINO heads ``c_head``/``p_head`` are dropped);
* a URL (downloaded once by torch.hub into ``$TORCH_HOME/hub/checkpoints``; Hugging Face URLs, including the
  README's ``/blob/main/`` links, go through the Hugging Face cache instead);
* the name of a released file, e.g. ``cifar10-vit-tiny-pretrain`` or ``dino-imagenet-vit-small-pretrain``
  (``python -m patchmix.weights list``), downloaded with ``huggingface_hub`` (cached, resumable) or, for DINO's
  files, from their URL with torch.hub, or found in ``--weights-dir`` when downloaded by hand (the only way for
  the APS entries, whose hub paths are not published, and SelfPatch's, a Google Drive page).

Attention heads are not stored in any file: ours store them; released names know their method (ViT-S: PatchMix
12 heads, APS / DINO / SelfPatch 6); DINO / SelfPatch training checkpoints name their architecture in
``args.arch``; a plain backbone file named ``dino_*`` (DINO's release names) gets DINO's counts; anything else
PatchMix's, with a note. ``--num-heads`` overrides all of these.

:func:`load_weights` returns a plain timm backbone state dict (no head, no prefix; SelfPatch models: plus the
SelfPatch head ``ca_head.*``) plus the ``build_backbone`` arguments it needs and a description of what was found;
:func:`build_model` turns that into a ready ``VisionTransformer`` (SelfPatch: a ``SelfPatchViT``, whose
``forward_head`` gives the SelfPatch image vector where other ViTs give their CLS token).

Safety: files are read with ``torch.load(weights_only=True)``, which runs no code. A file that pickles whole
Python objects (the official ``best.pth``) is then read by a restricted unpickler that resolves no class
outside a handful of torch tensor-rebuilding functions: every other class becomes an inert placeholder, nothing
is imported, no code from the file runs, and the tensors are collected from the placeholders' recorded module
state (a pickled ``argparse.Namespace``, DINO's ``args``, comes back as a dict of its plain values).
``allow_pickle=True`` (``--allow-pickle``) falls back to ``torch.load(weights_only=False)``, which executes
whatever the file contains: use it only for files you trust, when the restricted reader fails.

Command line::

    python -m patchmix.weights list                           # the released files, as a table
    python -m patchmix.weights info SOURCE                    # what the loader finds in a file / name / URL
    python -m patchmix.weights download NAME                  # fetch a released file into the cache
    python -m patchmix.weights export SOURCE --out DIR        # plain timm backbone: .pth + .safetensors
"""


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint path, URL or released name")
    parser.add_argument("--encoder", default="momentum_encoder",
                        help="encoder of a pretraining file: momentum_encoder (default) or base_encoder")
    parser.add_argument("--checkpoint-key", default="",
                        help="entry holding the state dict (DINO / SelfPatch checkpoints: teacher by default, or "
                             "student)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="trust the file: torch.load(weights_only=False) runs code stored in it")
    parser.add_argument("--arch", default="", help="override the architecture (default: from the file)")
    parser.add_argument("--patch-size", type=int, default=0, help="override the patch size")
    parser.add_argument("--num-heads", type=int, default=0, help="override the number of attention heads")
    parser.add_argument("--weights-dir", default=None, help="folder of hand-downloaded released files")


def _load_from_args(args: argparse.Namespace) -> LoadedWeights:
    return load_weights(args.source, args.encoder, args.checkpoint_key, args.allow_pickle, args.arch,
                        args.patch_size, args.num_heads, args.weights_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patchmix.weights", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the released weights as a table")
    info = commands.add_parser("info", help="describe what the loader finds in a file, URL or released name")
    _add_load_arguments(info)
    download = commands.add_parser("download", help="fetch a released file (or URL) into the local cache")
    download.add_argument("source")
    download.add_argument("--weights-dir", default=None)
    export = commands.add_parser("export", help="write a plain timm backbone (.pth + .safetensors + .json)")
    _add_load_arguments(export)
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--name", default="",
                        help="file name stem (default <method>_<arch>_p<patch>_<img>, e.g. dino_vit_small_p16_224)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(format_registry())
        elif args.command == "download":
            path, _ = resolve_weights(args.source, args.weights_dir)
            print(path)
        elif args.command == "info":
            print(_load_from_args(args).describe())
        else:
            loaded = _load_from_args(args)
            print(loaded.describe())
            record = export_backbone(loaded, args.out, args.name)
            out = Path(args.out)
            print(f"wrote {out / record['files']['pth']}, {out / record['files']['safetensors']} and "
                  f"{out / (Path(record['files']['safetensors']).stem + '.json')}")
            print("load it with timm (CLS-token features, ImageNet normalisation):")
            print(f"  import timm\n  model = {record['usage']}")
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
