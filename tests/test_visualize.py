"""The pictures command writes the three figures at the expected sizes; --image draws one image's attention."""

from __future__ import annotations

import sys

import pytest
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


# ------------------------------------------------------------------------------------------------------------
# --image: the per-head attention of one image of the user's


def manual_cls_row(model, image: torch.Tensor) -> torch.Tensor:
    """(heads, keys): the CLS row of the last block's attention, computed by hand from its qkv projection."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image[None]))))
    for block in model.blocks[:-1]:
        x = block(x)
    block = model.blocks[-1]
    attn = block.attn
    y = block.norm1(x)
    batch, tokens, dim = y.shape
    qkv = attn.qkv(y).reshape(batch, tokens, 3, attn.num_heads, dim // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)[0, :, 0]


def manual_selfpatch_row(model, image: torch.Tensor) -> torch.Tensor:
    """(heads, keys): the SelfPatch head's query row in its last class-attention block, by hand."""
    head = model.ca_head
    tokens = model.forward_features(image[None])
    query = head.cls_token.expand(1, -1, -1)
    for block in head.cls_blocks[:-1]:
        query = block(tokens, query)
    block = head.cls_blocks[-1]
    x = block.norm1(torch.cat([query, tokens], dim=1))
    heads, dim = block.attn.num_heads, x.shape[-1]
    q = block.attn.q(x[:, :1]).reshape(1, 1, heads, dim // heads).transpose(1, 2)
    k = block.attn.k(x).reshape(1, x.shape[1], heads, dim // heads).transpose(1, 2)
    return (q @ k.transpose(-2, -1) * block.attn.scale).softmax(dim=-1)[0, :, 0]


@pytest.mark.parametrize("selfpatch", [False, True], ids=["vit", "selfpatch"])
def test_image_attention_maps_are_distributions_and_match_a_manual_computation(tmp_path, toy_data, selfpatch):
    import numpy as np

    from patchmix.data import build_dataset, eval_transform
    from patchmix.models import build_backbone
    from patchmix.weights import build_model, load_weights

    torch.manual_seed(0)
    sizes = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4)
    weights = tmp_path / "weights.pth"
    torch.save(build_backbone(selfpatch_head=selfpatch, **sizes).state_dict(), weights)
    image_path = tmp_path / "photo.png"
    build_dataset("fashion_mnist", str(toy_data), train=False)[3][0].save(image_path)  # 28 px, drawn at 16
    out = tmp_path / "drawn" / "attention.png"
    assert visualize.main(["--weights", str(weights), "--num-heads", "4", "--image", str(image_path), "--out",
                           str(out)]) == 0

    saved = np.load(out.with_suffix(".npz"))
    maps, kept = torch.from_numpy(saved["attention"]), torch.from_numpy(saved["cls_share"])
    assert maps.shape == (4, 4, 4) and kept.shape == (4,)
    assert torch.allclose(maps.flatten(1).sum(-1), torch.ones(4), atol=1e-5)  # a distribution over the patches
    model = build_model(load_weights(str(weights), num_heads=4)).eval()
    with torch.no_grad():
        image = eval_transform(16, 1.0)(Image.open(image_path).convert("RGB"))
        row = manual_selfpatch_row(model, image) if selfpatch else manual_cls_row(model, image)
    patches = row[:, 1:]
    assert torch.allclose(maps.flatten(1), patches / patches.sum(-1, keepdim=True), atol=1e-5)
    assert torch.allclose(kept, row[:, 0], atol=1e-5) and torch.all(kept > 0)  # the query's share for itself
    picture = Image.open(out)
    panel = 16 * 10  # 16-px input, enlarged 10 times to at least 160 px
    assert picture.width == 5 * (panel + 6) + 6  # the image and 4 heads in one row
    caption = picture.height - (panel + 18 + 6) - 8
    assert caption > 0 and caption % 18 == 0  # under a caption of whole lines


def test_image_attention_bad_input_is_one_error_line(tmp_path, capsys):
    assert visualize.main(["--image", str(tmp_path / "missing.jpg"), "--weights", ""]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --image {tmp_path / 'missing.jpg'}: no such file."]
    (tmp_path / "a.png").write_bytes(b"not a png")
    assert visualize.main(["--image", str(tmp_path / "a.png"), "--out", str(tmp_path / "a.jpg"), "--weights",
                           ""]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --out") and ".png" in line
    assert visualize.main(["--image", str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png"), "--weights",
                           ""]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: cannot decode image")
