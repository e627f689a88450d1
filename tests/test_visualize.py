"""The pictures command writes the three figures at the expected sizes."""

from __future__ import annotations

import sys

import torch
from conftest import REPO_ROOT
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "tools"))
import visualize  # noqa: E402


def test_figures_are_written_with_the_right_sizes(tmp_path, toy_data):
    out = tmp_path / "figures"
    assert visualize.main(["--data-path", str(toy_data), "--out", str(out), "--batch", "5", "--scale", "2",
                           "--weights", ""]) == 0
    sizes = {}
    for name in ("mixing.png", "attention.png", "similarity.png"):
        image = Image.open(out / name)
        image.load()
        sizes[name] = image.size
        assert image.getextrema() != ((255, 255), (255, 255), (255, 255)), f"{name} is blank"
    side, gap = 28 * 2, 8
    # mixing: two rows of 5 images (56 px) + a 5x5 heat map of 40-px cells
    assert sizes["mixing.png"] == (max(5 * (side + gap), 2 * 5 * 40 + 4 * gap) + gap,
                                   2 * (side + 22) + 5 * 40 + 2 * 22 + 4 * gap)
    # attention: the image and one map per head (4 heads of the default random ViT), 4 images
    assert sizes["attention.png"] == (5 * (side + 4) + 4, 4 * (side + 4) + 22 + 4)


def test_cls_attention_rows_are_distributions_over_patches():
    from patchmix.models import build_backbone
    model = build_backbone("vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2).eval()
    maps = visualize.cls_attention(model, torch.randn(3, 3, 16, 16))
    assert maps.shape == (3, 2, 4, 4)
    assert torch.all(maps.flatten(2).sum(-1) < 1.0) and torch.all(maps > 0)  # the CLS token takes the rest
