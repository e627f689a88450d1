"""Embed your own images: the feature of every image of a folder, with any weights the project loads.

  python -m patchmix.features --weights cifar10-vit-small-pretrain --images photos/ --out photos.safetensors
  python -m patchmix.features --weights out/c10_s/checkpoint.pth --images photos/ --out photos.npy --patch-tokens

Every image under ``--images`` (recursively; the extensions torchvision's ImageFolder reads) goes through the
evaluation transform of ``main_knn.py`` (resize to IMG_SIZE / CROP_PCT, bicubic; centre crop IMG_SIZE; ImageNet
normalisation; IMG_SIZE = the resolution of the weights unless ``--img-size``) and the encoder ``main_knn.py``
evaluates, through the kNN harness's own extraction: row ``i`` is the feature ``main_knn.py --dataset folder``
computes for that image (the CLS token after the final LayerNorm; a SelfPatch model's head aggregate).

Output, by the extension of ``--out``:

* ``.safetensors``: tensor ``features`` (N, D), with ``--patch-tokens`` also ``patch_tokens`` (N, tokens, D),
  the last block's patch tokens after the final LayerNorm; the metadata holds ``files`` (a JSON list of the
  image paths relative to ``--images``, in row order), ``weights`` and ``img_size``;
* ``.npy``: the features array, ``OUT.files.txt`` beside it (one relative path a line, in row order) and, with
  ``--patch-tokens``, ``OUT.patch_tokens.npy``.

--weights takes what ``main_knn.py --pretrained-weights`` takes: a checkpoint (ours at any stage, an official
PatchMix, APS, DINO or SelfPatch file), a URL, or a released name (``python -m patchmix.weights list``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from patchmix.cli import USER_ERRORS
from patchmix.config import ConfigError
from patchmix.data import DataError, eval_transform, load_rgb, standard_crop_pct
from patchmix.distributed import pick_device
from patchmix.engine import amp_dtype
from patchmix.knn import extract_features
from patchmix.models import cls_features
from patchmix.weights import build_model, load_weights

__all__ = ["ImageFiles", "find_images", "embed_images", "save_features", "OUTPUT_FORMATS", "main"]

OUTPUT_FORMATS = (".safetensors", ".npy")


def find_images(root: Path) -> list[str]:
    """The image files under ``root`` (recursively), as sorted POSIX paths relative to it."""
    if not root.is_dir():
        raise DataError(f"--images {root}: no such directory.")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise DataError(f"no images under {root} (looked for {', '.join(IMG_EXTENSIONS)}, in sub-folders too).")
    return files


class ImageFiles(Dataset):
    """The images of a folder as ``(transform(RGB image), 0)`` items, in the order of ``files``."""

    def __init__(self, root: Path, files: list[str], transform: Callable) -> None:
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(str(self.root / self.files[index]))), 0


@torch.no_grad()
def embed_images(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                 num_workers: int = 0, autocast: torch.dtype | None = None, patch_tokens: bool = False,
                 progress: bool = True) -> dict[str, torch.Tensor]:
    """``features`` (N, D) and optionally ``patch_tokens`` (N, T, D) of every item of ``dataset``, computed by
    the kNN harness's :func:`patchmix.knn.extract_features` (one forward pass per batch for both)."""
    model = model.to(device).eval()
    encode = cls_features(model)
    if not patch_tokens:
        features, _ = extract_features(encode, dataset, batch_size, device, num_workers, autocast, progress=progress)
        return {"features": features.cpu()}
    width = model.embed_dim
    prefix = model.num_prefix_tokens

    def encode_both(images: torch.Tensor) -> torch.Tensor:
        tokens = model.forward_features(images)
        pooled = model.forward_head(tokens, pre_logits=True)
        return torch.cat([pooled, tokens[:, prefix:].flatten(1)], dim=1)

    both, _ = extract_features(encode_both, dataset, batch_size, device, num_workers, autocast, progress=progress)
    both = both.cpu()
    return {"features": both[:, :width].contiguous(),
            "patch_tokens": both[:, width:].reshape(len(both), -1, width).contiguous()}


def save_features(out: Path, tensors: dict[str, torch.Tensor], files: list[str], metadata: dict[str, str]
                  ) -> list[Path]:
    """Write ``tensors`` and the file list in the format of ``out``'s extension; return the files written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(out), metadata={**metadata, "files": json.dumps(files)})
        return [out]
    np.save(out, tensors["features"].numpy())
    listing = out.with_suffix(".files.txt")
    listing.write_text("".join(f"{name}\n" for name in files))
    written = [out, listing]
    if "patch_tokens" in tensors:
        written.append(out.with_suffix(".patch_tokens.npy"))
        np.save(written[-1], tensors["patch_tokens"].numpy())
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m patchmix.features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint, URL or released name (as main_knn.py's "
                        "--pretrained-weights)")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="output file: .safetensors or .npy")
    parser.add_argument("--patch-tokens", action="store_true", help="also save the patch tokens (N x tokens x D)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--num-workers", type=int, default=4, help="image-decoding processes (default 4)")
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"),
                        help="autocast as main_knn.py: auto = bf16 on GPUs that support it, none on the CPU")
    parser.add_argument("--img-size", type=int, default=0, help="input resolution; 0 = the weights' resolution")
    parser.add_argument("--crop-pct", type=float, default=0.0, help="resize to IMG_SIZE / CROP_PCT, centre-crop "
                        "IMG_SIZE; 0 = main_knn.py's choice for a folder dataset (1.0: the whole image)")
    loading = parser.add_argument_group("reading the weights (as main_knn.py)")
    loading.add_argument("--encoder", default="momentum_encoder", help="encoder of a pretraining checkpoint")
    loading.add_argument("--checkpoint-key", default="", help="entry of the file holding the state dict")
    loading.add_argument("--allow-pickle", action="store_true", help="trust the file's pickled code")
    loading.add_argument("--weights-dir", default="", help="folder of hand-downloaded released files")
    loading.add_argument("--arch", default="", help="ViT size (default: from the weights)")
    loading.add_argument("--patch-size", type=int, default=0, help="patch size (default: from the weights)")
    loading.add_argument("--num-heads", type=int, default=0, help="attention heads (default: from the weights)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[Path]:
    """Embed the images of ``args.images`` into ``args.out``; return the files written."""
    out = Path(args.out)
    if out.suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"--out {out}: unknown extension {out.suffix or '(none)'!r}; use .safetensors (one file "
                          f"with the file list inside) or .npy (file list in .files.txt beside it).")
    if args.batch_size < 1 or args.num_workers < 0 or not 0 <= args.crop_pct <= 1 or args.img_size < 0:
        raise ConfigError("--batch-size must be at least 1, --num-workers and --img-size at least 0, --crop-pct "
                          "between 0 and 1.")
    root = Path(args.images)
    files = find_images(root)
    loaded = load_weights(args.weights, args.encoder, args.checkpoint_key, args.allow_pickle, args.arch,
                          args.patch_size, args.num_heads, weights_dir=args.weights_dir or None)
    print(loaded.describe())
    model = build_model(loaded)
    size = args.img_size or int(loaded.backbone["img_size"])
    transform = eval_transform(size, args.crop_pct or standard_crop_pct("folder"))
    try:
        device = pick_device(args.device, 0)
    except RuntimeError as error:
        raise ConfigError(str(error)) from error
    tensors = embed_images(model, ImageFiles(root, files, transform), args.batch_size, device, args.num_workers,
                           amp_dtype(args.amp, device), args.patch_tokens)
    metadata = {"weights": json.dumps(loaded.summary()), "img_size": str(size)}
    written = save_features(out, tensors, files, metadata)
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
    print(f"embedded {len(files)} images of {root} at {size}px: {shapes} -> {', '.join(map(str, written))}")
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
