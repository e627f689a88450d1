"""APS as a method: its token-selecting encoder, loss, samplings per batch, schedule, recipes and a resumable run."""

from __future__ import annotations

import json
import math

import pytest
import torch

import main_pretrain
from patchmix.config import parse_config, recipe_names
from patchmix.loss import info_nce
from patchmix.methods import APS, APSConfig
from patchmix.methods.aps import APSSchedule, encode_selected
from patchmix.models import cls_features
from patchmix.schedules import StepValues

TINY_APS = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, qkv_bias=False,
                norm_eps=1e-5, pos_embed_cls=False)
FLAGS = ["--config", "aps_demo", "--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "2",
         "--num-heads", "2", "--hidden-dim", "64", "--out-dim", "32", "--batch-size", "16", "--epochs", "2",
         "--num-workers", "0", "--device", "cpu", "--train-subset", "64", "--log-freq", "1", "--no-knn-eval"]


def tiny(**kwargs) -> APS:
    torch.manual_seed(0)
    return APS(TINY_APS, hidden_dim=64, out_dim=32, **kwargs)


def test_selecting_every_patch_is_the_plain_vit_and_the_order_of_patches_does_not_matter():
    model = tiny().eval()
    images = torch.randn(3, 3, 16, 16)
    every = torch.arange(16).expand(3, 16)
    full = cls_features(model.base_encoder)(images)  # timm's forward: position table of the patches only
    assert torch.allclose(encode_selected(model.base_encoder, images, every), full, atol=1e-5)
    cells = torch.stack([torch.randperm(16)[:4] for _ in range(3)])
    shuffled = cells[:, torch.randperm(4)]
    assert torch.allclose(encode_selected(model.base_encoder, images, cells),
                          encode_selected(model.base_encoder, images, shuffled), atol=1e-5)
    # ... and a different subset gives a different feature: the selection is real
    assert not torch.allclose(encode_selected(model.base_encoder, images, cells), full, atol=1e-3)


def test_the_vit_is_the_official_one():
    vit = tiny().base_encoder
    assert vit.blocks[0].attn.qkv.bias is None and vit.norm.eps == 1e-5
    assert vit.pos_embed.shape == (1, 16, 32)  # no row for the CLS token
    assert APS.backbone_kwargs(parse_config(APSConfig, ["--config", "aps_cifar10_vit_small"], "pretrain",
                                            ""))["num_heads"] == 6  # APS's ViT-S has 6 heads (PatchMix's 12)


def test_loss_is_the_symmetric_info_nce_with_stop_gradient_keys():
    model = tiny()
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    cells1, cells2 = torch.randint(0, 16, (4, 4)), torch.randint(0, 16, (4, 4))
    output = model([x1, x2, cells1, cells2], StepValues(0.0, 0.0))
    z1 = model.base_encoder.head(encode_selected(model.base_encoder, x1, cells1))
    z2 = model.base_encoder.head(encode_selected(model.base_encoder, x2, cells2))
    p1, p2 = model.predictor(z1), model.predictor(z2)
    expected = info_nce(p1, z2.detach(), 0.1)[0] + info_nce(p2, z1.detach(), 0.1)[0]
    # BatchNorm in train mode: the second pass sees the same batches, so the values agree
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(output.terms) == {"similarity"} and -1 <= output.terms["similarity"].item() <= 1


def test_each_batch_becomes_nsampling_steps_with_disjoint_view1_patches():
    model = tiny(sampling={"nsampling": 4, "sampling_ratio": 0.25})
    meta = torch.tensor([[0.0, 0.0, 28.0, 28.0, 0.0, 28.0, 28.0]]).repeat(5, 1)
    views = [torch.randn(5, 3, 16, 16), torch.randn(5, 3, 16, 16), meta, meta]
    parts = model.substeps(views)
    assert len(parts) == 4 and APS.steps_per_batch(APSConfig(nsampling=4)) == 4
    chunks = torch.stack([part[2] for part in parts], dim=1)  # (B, 4, 4)
    for image in chunks:
        assert sorted(image.flatten().tolist()) == list(range(16))  # 4 disjoint quarters of the 16 patches
    for part in parts:
        assert part[0] is views[0] and part[3].shape == (5, 4)


def test_the_schedule_is_the_official_per_epoch_lambda():
    schedule = APSSchedule(steps_per_epoch=10, epochs=100, peak_lr=1.0, warmup_epochs=20)
    for epoch in (0, 5, 19, 20, 50, 99):
        expected = min((epoch + 1) / 20, 0.5 * (1 + math.cos(math.pi * epoch / 100)))
        for step in (epoch * 10, epoch * 10 + 9):
            assert schedule.at(step).lr == pytest.approx(expected)
            assert schedule.at(step).weight_decay == pytest.approx(0.05)


def test_every_parameter_is_decayed_as_in_the_official_optimizer():
    model = tiny()
    (group,) = model.param_groups(0.05)
    assert group["weight_decay"] == 0.05 and len(group["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("name", [n for n in recipe_names("pretrain") if n.startswith("aps_")])
def test_recipes_resolve_with_the_official_switches(name):
    paper = parse_config(APSConfig, ["--config", name], "pretrain", "")
    official = parse_config(APSConfig, ["--config", name, "--preset", "official"], "pretrain", "")
    assert paper.method == official.method == "aps" and paper.respect_flips and not official.respect_flips
    if name != "aps_demo":
        assert (paper.epochs, paper.batch_size, paper.warmup_epochs, paper.temperature) == (1600, 512, 20, 0.1)
        assert (paper.nsampling, paper.sampling_ratio, paper.power, paper.weight_decay) == (4, 0.25, 3.0, 0.05)
        assert paper.base_lr == (1e-3 if "tiny" in name else 5e-4) and official.amp == "fp16"


def test_a_run_stopped_mid_epoch_resumes_to_the_identical_weights(tmp_path, toy_data):
    def run(name, *extra):
        out = tmp_path / name
        assert main_pretrain.main(FLAGS + ["--data-path", str(toy_data), "--output-dir", str(out), *extra]) == 0
        return torch.load(out / "checkpoint.pth", weights_only=True)

    straight = run("straight")
    assert straight["global_step"] == 32 and straight["method"] == "aps"  # 4 batches x 4 samplings x 2 epochs
    assert straight["backbone"]["pos_embed_cls"] is False
    stopped = run("pieces", "--stop-after-steps", "6")  # ends with the batch that reaches 6 steps: 8
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (0, 8)
    resumed = run("pieces")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lines = [json.loads(line) for line in (tmp_path / "straight" / "log.txt").read_text().splitlines()]
    assert "train_similarity" in lines[0]
    # the checkpoint is an APS one for every evaluation: APS's ViT, and no complaint about a momentum encoder
    from patchmix.weights import load_weights
    loaded = load_weights(str(tmp_path / "straight" / "checkpoint.pth"))
    assert loaded.encoder == "base_encoder" and loaded.backbone["pos_embed_cls"] is False
    assert not any("momentum" in note for note in loaded.notes) and "APS" in loaded.kind
