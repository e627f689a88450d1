"""Pictures of PatchMix: the mixing of a batch, attention maps, and query-key similarities (PNG files).

  python tools/visualize.py                                   # Fashion-MNIST, demo checkpoint if it exists
  python tools/visualize.py --weights output/c10_vit_small/checkpoint.pth --dataset cifar10 --data-path data
  python tools/visualize.py --weights dino-imagenet-vit-small-pretrain --image photo.jpg --out photo_attention.png

Writes to --out (default docs/figures):
  mixing.png      originals, their PatchMix mixes and both target matrices (the paper's Figure 2)
  attention.png   the last block's CLS attention of every head for a few images (the paper's Appendix E)
  similarity.png  softmax similarity of a mixed query to the original images next to its mix-to-origin target
                  (the paper's Figure 4)

With --image, the attention of one image of yours instead (DINO's attention maps): the image through main_knn.py's
evaluation transform at the weights' resolution, then one panel per head of the last block's attention of the
CLS token to the patches, renormalised over the patches; written to --out (a .png; default IMAGE_attention.png)
with the maps themselves beside it (.npz: ``attention`` heads x grid x grid, each map summing to 1, and
``cls_share``, the attention each head's CLS token keeps for the CLS token itself). SelfPatch models have no CLS
token: their feature is the SelfPatch head's query, so its attention to the patches (the head's last
class-attention block) is drawn.

Only Pillow (installed with torchvision) is used for drawing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, eval_transform  # noqa: E402
from patchmix.mix import patch_mix  # noqa: E402
from patchmix.models import build_backbone  # noqa: E402

# A perceptually ordered colour map (anchors of matplotlib's viridis), interpolated linearly.
_VIRIDIS = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                        dtype=torch.float32)
BACKGROUND, INK, ACCENT = (255, 255, 255), (30, 30, 30), (214, 39, 40)


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1] to RGB uint8 (shape (..., 3))."""
    position = values.clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = position.floor().long().clamp(max=len(_VIRIDIS) - 2)
    fraction = (position - low)[..., None]
    return (_VIRIDIS[low] * (1 - fraction) + _VIRIDIS[low + 1] * fraction).round().to(torch.uint8)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def to_pil(image: torch.Tensor, scale: int) -> Image.Image:
    """A normalised (3, H, W) tensor as a PIL image, enlarged ``scale`` times (nearest)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = ((image.float().cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    pil = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def heatmap(matrix: torch.Tensor, cell: int, annotate: bool = True) -> Image.Image:
    """A (R, C) matrix as coloured cells (scaled to its maximum), with the values written in."""
    rows, cols = matrix.shape
    colours = colormap(matrix / matrix.max().clamp(min=1e-12))
    image = Image.fromarray(colours.numpy()).resize((cols * cell, rows * cell), Image.NEAREST)
    if annotate and cell >= 28:
        draw, small = ImageDraw.Draw(image), font(max(9, cell // 4))
        for r in range(rows):
            for c in range(cols):
                value = matrix[r, c].item()
                if value > 0:
                    text = f"{value:.2f}".lstrip("0")
                    shade = INK if colours[r, c].float().mean() > 128 else BACKGROUND
                    draw.text((c * cell + cell // 2, r * cell + cell // 2), text, fill=shade, font=small,
                              anchor="mm")
    return image


def patch_grid(image: Image.Image, patch: int, scale: int) -> Image.Image:
    draw = ImageDraw.Draw(image)
    step = patch * scale
    for x in range(step, image.width, step):
        draw.line([(x, 0), (x, image.height)], fill=(255, 255, 255), width=1)
    for y in range(step, image.height, step):
        draw.line([(0, y), (image.width, y)], fill=(255, 255, 255), width=1)
    return image


def mixing_figure(images: torch.Tensor, num_mix: int, patch: int, scale: int, seed: int) -> Image.Image:
    mixed, m2o, m2m = patch_mix(images, num_mix, patch, torch.Generator().manual_seed(seed))
    batch, side = images.shape[0], images.shape[-1] * scale
    gap, label_h, title = 8, 22, font(16)
    cell = 40
    width = max(batch * (side + gap), 2 * batch * cell + 4 * gap) + gap
    height = 2 * (side + label_h) + batch * cell + 2 * label_h + 4 * gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = gap
    draw.text((gap, y), f"original batch (B = {batch})", fill=INK, font=title)
    y += label_h
    for i in range(batch):
        canvas.paste(to_pil(images[i], scale), (gap + i * (side + gap), y))
        draw.text((gap + i * (side + gap) + 2, y + 2), str(i), fill=ACCENT, font=title)
    y += side + gap
    draw.text((gap, y), f"mixed, m = {num_mix}: patch group j of image g comes from image g+j (mod B)", fill=INK,
              font=title)
    y += label_h
    for i in range(batch):
        tile = patch_grid(to_pil(mixed[i], scale), patch, scale)
        canvas.paste(tile, (gap + i * (side + gap), y))
        sources = ",".join(str((i + j) % batch) for j in range(num_mix))
        draw.text((gap + i * (side + gap) + 2, y + 2), sources, fill=ACCENT, font=title)
    y += side + gap
    draw.text((gap, y), "mix-to-origin target", fill=INK, font=title)
    draw.text((3 * gap + batch * cell, y), "mix-to-mix target", fill=INK, font=title)
    y += label_h
    canvas.paste(heatmap(m2o, cell), (gap, y))
    canvas.paste(heatmap(m2m, cell), (3 * gap + batch * cell, y))
    return canvas


def feature_attention_module(model: torch.nn.Module) -> tuple[str, int, str]:
    """The attention module whose first query forms the feature, the number of keys before the patches, and
    what it is in words: the last block's (CLS token: query 0; the prefix tokens come first), or for a SelfPatch
    model (no CLS token) the SelfPatch head's last class-attention block (its query token is key 0)."""
    if hasattr(model, "ca_head"):
        last = len(model.ca_head.cls_blocks) - 1
        return (f"ca_head.cls_blocks.{last}.attn", 1, "the SelfPatch head's query attention to the patches "
                "(last class-attention block, the model has no CLS token)")
    return f"blocks.{len(model.blocks) - 1}.attn", model.num_prefix_tokens, "last-block CLS attention"


@torch.no_grad()
def attention_weights(model: torch.nn.Module, images: torch.Tensor, name: str) -> torch.Tensor:
    """(B, heads, queries, keys): the softmax attention timm's attention module ``name`` computes in a forward
    pass of ``images``. A forward hook reads it where timm's own code passes it through ``attn_drop`` (the
    module's unfused path is switched on for this pass: the fused kernel never forms the matrix); the hook is
    removed afterwards. (``timm.utils.AttentionExtract`` does the same but leaves its hooks on the model.)"""
    attention = model.get_submodule(name)
    captured: list[torch.Tensor] = []
    handle = attention.attn_drop.register_forward_hook(lambda module, inputs, output: captured.append(output))
    fused, attention.fused_attn = attention.fused_attn, False
    try:
        model.eval()(images)
    finally:
        attention.fused_attn = fused
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"{name} ran {len(captured)} times in one forward pass; expected once.")
    return captured[0]


@torch.no_grad()
def cls_attention(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, grid, grid): the attention of the feature's query (the CLS token; SelfPatch: the head's query)
    to every patch in the last attention that forms the feature, per head (what it keeps for itself is left out,
    so a map sums to less than 1)."""
    name, prefix, _ = feature_attention_module(model)
    weights = attention_weights(model, images, name)[:, :, 0, prefix:]
    grid = int(round(weights.shape[-1] ** 0.5))
    return weights.reshape(weights.shape[0], weights.shape[1], grid, grid)


def attention_figure(model: torch.nn.Module, images: torch.Tensor, scale: int, caption: str) -> Image.Image:
    maps = cls_attention(model, images)
    batch, heads = maps.shape[:2]
    side, gap, label_h = images.shape[-1] * scale, 4, 22
    canvas = Image.new("RGB", ((heads + 1) * (side + gap) + gap, batch * (side + gap) + label_h + gap), BACKGROUND)
    ImageDraw.Draw(canvas).text((gap, gap), caption, fill=INK, font=font(16))
    for b in range(batch):
        y = label_h + b * (side + gap)
        canvas.paste(to_pil(images[b], scale), (gap, y))
        for h in range(heads):
            attention = maps[b, h]
            attention = (attention - attention.min()) / (attention.max() - attention.min()).clamp(min=1e-12)
            tile = Image.fromarray(colormap(attention).numpy()).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (gap + (h + 1) * (side + gap), y))
    return canvas


@torch.no_grad()
def similarity_figure(model: torch.nn.Module, images: torch.Tensor, num_mix: int, patch: int, scale: int,
                      temperature: float, seed: int, caption: str) -> Image.Image:
    mixed, m2o, _ = patch_mix(images, num_mix, patch, torch.Generator().manual_seed(seed))
    query = F.normalize(model(mixed[:1]), dim=1)
    keys = F.normalize(model(images), dim=1)
    probability = (query @ keys.t() / temperature).softmax(dim=1)[0]
    target = m2o[0]
    batch, side, gap = images.shape[0], images.shape[-1] * scale, 10
    bar_w, plot_h, label_h = side, 160, 22
    left = side + 3 * gap
    canvas = Image.new("RGB", (left + batch * (bar_w + gap) + gap, plot_h + side + 3 * label_h + 3 * gap),
                       BACKGROUND)
    draw, text = ImageDraw.Draw(canvas), font(14)
    draw.text((gap, gap), caption, fill=INK, font=font(16))
    top = label_h + 2 * gap
    canvas.paste(patch_grid(to_pil(mixed[0], scale), patch, scale), (gap, top + plot_h - side))
    draw.text((gap, top + plot_h + 4), "query", fill=INK, font=text)
    base = top + plot_h
    draw.line([(left - gap // 2, base), (canvas.width - gap, base)], fill=INK)
    for i in range(batch):
        x = left + i * (bar_w + gap)
        height = int(probability[i].item() * plot_h)
        draw.rectangle([x, base - height, x + bar_w - 1, base], fill=tuple(int(v) for v in colormap(
            torch.tensor(0.35))))
        goal = int(target[i].item() * plot_h)
        if goal:
            draw.rectangle([x, base - goal, x + bar_w - 1, base], outline=ACCENT, width=2)
        draw.text((x + bar_w // 2, base - height - 2), f"{probability[i].item():.2f}", fill=INK, font=text,
                  anchor="mb")
        canvas.paste(to_pil(images[i], scale), (x, base + 4))
    draw.text((left, base + side + 8), f"bars: softmax(cos / {temperature}) of the mixed query to each original; "
                                       f"red outline: its mix-to-origin target", fill=INK, font=text)
    return canvas


def wrap(text: str, typeface: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (words kept whole)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and measure.textlength(f"{lines[-1]} {word}", font=typeface) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def image_attention_figure(image: torch.Tensor, maps: torch.Tensor, caption: str, columns: int = 7
                           ) -> Image.Image:
    """One image and one panel per head of its attention maps (``maps``: heads x grid x grid), each map
    stretched to its own range; panels at least 160 px wide, in rows of ``columns``; the caption wrapped."""
    heads, side = maps.shape[0], image.shape[-1]
    scale = max(1, -(-160 // side))
    panel, gap, label_h = side * scale, 6, 18
    columns = min(columns, heads + 1)
    rows = -(-(heads + 1) // columns)
    width = columns * (panel + gap) + gap
    lines = wrap(caption, font(15), width - 2 * gap)
    top = 8 + 18 * len(lines)
    canvas = Image.new("RGB", (width, top + rows * (panel + label_h + gap)), BACKGROUND)
    draw, small = ImageDraw.Draw(canvas), font(13)
    for number, line in enumerate(lines):
        draw.text((gap, 5 + 18 * number), line, fill=INK, font=font(15))
    for index in range(heads + 1):
        x = gap + (index % columns) * (panel + gap)
        y = top + (index // columns) * (panel + label_h + gap)
        if index == 0:
            tile, label = to_pil(image, scale), "image"
        else:
            attention = maps[index - 1]
            attention = (attention - attention.min()) / (attention.max() - attention.min()).clamp(min=1e-12)
            tile = Image.fromarray(colormap(attention).numpy()).resize((panel, panel), Image.NEAREST)
            label = f"head {index}"
        canvas.paste(tile, (x, y + label_h))
        draw.text((x, y + 2), label, fill=INK, font=small)
    return canvas


def attend_image(model: torch.nn.Module, path: Path, img_size: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, str]:
    """The image at ``path`` through main_knn.py's evaluation transform (whole image, ``img_size`` px), its
    attention maps renormalised over the patches (heads x grid x grid, each summing to 1), the share each head's
    query keeps for the tokens before the patches, and what the maps are."""
    from patchmix.data import load_rgb, standard_crop_pct

    image = eval_transform(img_size, standard_crop_pct("folder"))(load_rgb(str(path)))
    name, prefix, what = feature_attention_module(model)
    row = attention_weights(model, image[None], name)[0, :, 0]  # (heads, keys)
    patches = row[:, prefix:]
    grid = int(round(patches.shape[-1] ** 0.5))
    maps = (patches / patches.sum(dim=-1, keepdim=True)).reshape(-1, grid, grid)
    return image, maps, row[:, :prefix].sum(dim=-1), what


def load_encoder(weights: str, patch_size: int, img_size: int, num_heads: int = 0) -> tuple[torch.nn.Module, str]:
    """The key encoder of a checkpoint (any format the weights loader knows), or a random ViT."""
    if weights:
        from patchmix.weights import build_model, load_weights
        loaded = load_weights(weights, num_heads=num_heads)
        return build_model(loaded).eval(), f"{Path(weights).name} ({loaded.encoder or 'backbone'})"
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", img_size=img_size, patch_size=patch_size, embed_dim=128, depth=6, num_heads=4)
    return model.eval(), "randomly initialised ViT (pass --weights for a trained one)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="", help="checkpoint (ours, official, or a released name); default: "
                        "output/demo/checkpoint.pth if it exists, else a random ViT")
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset to draw images from (test split)")
    parser.add_argument("--data-path", default="", help="dataset root (see main_pretrain.py --help)")
    parser.add_argument("--num-mix", type=int, default=3, help="m, images per mixed image")
    parser.add_argument("--patch-size", type=int, default=0, help="mixing patch (default: the model's)")
    parser.add_argument("--img-size", type=int, default=0, help="image side (default: the model's, or 28)")
    parser.add_argument("--batch", type=int, default=6, help="images in the mixed batch (>= 2m-1)")
    parser.add_argument("--scale", type=int, default=4, help="enlargement of the images in the pictures")
    parser.add_argument("--temperature", type=float, default=0.2, help="softmax temperature of the similarities")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mixing partition")
    parser.add_argument("--num-heads", type=int, default=0, help="attention heads, for weights that do not "
                        "store them (default: from the weights)")
    parser.add_argument("--image", default="", help="draw the per-head attention of this image file instead "
                        "(DINO's attention maps; see above)")
    parser.add_argument("--out", default="", help="output directory (default docs/figures); with --image, the "
                        "PNG file (default IMAGE_attention.png)")
    args = parser.parse_args(argv)

    weights = args.weights
    if not weights and Path("output/demo/checkpoint.pth").is_file():
        weights = "output/demo/checkpoint.pth"
    if args.image:
        return draw_image_attention(weights, Path(args.image), args)
    model, caption = load_encoder(weights, args.patch_size or 7, args.img_size or 28, args.num_heads)
    patch = args.patch_size or model.patch_embed.patch_size[0]
    img_size = args.img_size or model.patch_embed.img_size[0]

    dataset = build_dataset(args.dataset, args.data_path, train=False, transform=eval_transform(img_size))
    labels = [int(t) for t in getattr(dataset, "targets", range(len(dataset)))]
    indices = list({label: i for i, label in reversed(list(enumerate(labels)))}.values())  # one per class first
    chosen = set(indices)
    indices = (sorted(indices) + [i for i in range(len(dataset)) if i not in chosen])[:args.batch]
    images = torch.stack([dataset[i][0] for i in indices])

    out = Path(args.out or "docs/figures")
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "mixing.png": mixing_figure(images, args.num_mix, patch, args.scale, args.seed),
        "attention.png": attention_figure(model, images[:4], args.scale,
                                          f"last-block CLS attention per head; {caption}"),
        "similarity.png": similarity_figure(model, images, args.num_mix, patch, args.scale, args.temperature,
                                            args.seed, f"similarity of a mixed query; {caption}"),
    }
    for name, picture in written.items():
        picture.save(out / name)
        print(f"wrote {out / name} ({picture.width}x{picture.height})")
    return 0


def draw_image_attention(weights: str, image: Path, args: argparse.Namespace) -> int:
    """``--image``: the PNG of the image's per-head attention and the maps beside it (``.npz``); 2 after a
    one-line error for a bad image, weights or output name."""
    import numpy as np

    from patchmix.cli import USER_ERRORS
    from patchmix.data import DataError

    out = Path(args.out or f"{image.stem}_attention.png")
    try:
        if out.suffix.lower() != ".png":
            raise DataError(f"--out {out}: with --image, name a .png file (the maps go beside it as .npz).")
        if not image.is_file():
            raise DataError(f"--image {image}: no such file.")
        model, caption = load_encoder(weights, args.patch_size or 7, args.img_size or 28, args.num_heads)
        img_size = args.img_size or model.patch_embed.img_size[0]
        pixels, maps, kept, what = attend_image(model, image, img_size)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = image_attention_figure(pixels, maps, f"{image.name}: {what}, renormalised over the patches; "
                                                   f"{caption}")
    picture.save(out)
    maps_path = out.with_suffix(".npz")
    np.savez(maps_path, attention=maps.numpy(), cls_share=kept.numpy())
    print(f"wrote {out} ({picture.width}x{picture.height}, {maps.shape[0]} heads, {maps.shape[1]}x{maps.shape[2]} "
          f"patches) and the maps in {maps_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
