"""DINO as a method: head, loss and centre, teacher EMA, clipping, schedules, crops, recipes and a resumable run."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import main_pretrain
from patchmix.config import ConfigError, parse_config, recipe_names
from patchmix.engine import train_step
from patchmix.methods import DINO, DINOConfig, get_method
from patchmix.methods.dino import (
    DINO_HEADS,
    DINOHead,
    DINOLoss,
    DINOSchedule,
    DINOStepValues,
    DINOTransform,
    WeightNormLinear,
    clip_gradients_per_tensor,
)
from patchmix.models import DINOPositionViT, build_backbone, cls_features, dino_resample_pos_embed
from patchmix.pretrain import PretrainTask

TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
HEAD = dict(out_dim=64, hidden_dim=32, bottleneck_dim=8)
FLAGS = ["--config", "dino_demo", "--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "2",
         "--num-heads", "2", "--hidden-dim", "32", "--bottleneck-dim", "16", "--out-dim", "64",
         "--local-crops-number", "2", "--local-crop-size", "8", "--batch-size", "16", "--epochs", "2",
         "--warmup-epochs", "0.5", "--freeze-last-layer", "1", "--num-workers", "0", "--device", "cpu",
         "--train-subset", "64", "--log-freq", "1", "--no-knn-eval"]


def tiny(**head) -> DINO:
    torch.manual_seed(0)
    return DINO(TINY, drop_path_rate=0.0, head={**HEAD, **head})


def crops(batch: int = 4, local: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return ([torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]
            + [torch.randn(batch, 3, 8, 8, generator=generator) for _ in range(local)])


def values(step: int = 0, lr: float = 1e-2, momentum: float = 0.9, temp: float = 0.04, frozen: bool = False):
    return DINOStepValues(lr, 0.04, momentum, temp, frozen)


class Fixed:
    """A schedule giving the same values at every step."""

    def __init__(self, v: DINOStepValues) -> None:
        self.v, self.peak_lr = v, v.lr

    def at(self, step: int) -> DINOStepValues:
        return self.v


def task_for(model: DINO, v: DINOStepValues, **cfg) -> PretrainTask:
    task = PretrainTask(model, model, DINOConfig(weight_decay=0.04, **cfg), steps_per_epoch=1)
    task.schedules = Fixed(v)
    return task


def step(task: PretrainTask, views: list[torch.Tensor], clip: float = 0.0, at: int = 0):
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_step(task, scaler, (views, None), at, torch.device("cpu"), clip_grad=clip)


# ---------------------------------------------------------------------------------------------- networks

def test_head_shapes_keys_normalisation_and_init():
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=8)
    assert sorted(head.state_dict()) == ["last_layer.weight_g", "last_layer.weight_v", "mlp.0.bias", "mlp.0.weight",
                                         "mlp.2.bias", "mlp.2.weight", "mlp.4.bias", "mlp.4.weight"]
    assert isinstance(head.mlp[1], nn.GELU) and head.last_layer.weight_g.shape == (64, 1)
    assert head.last_layer.weight_v.shape == (64, 8) and not head.last_layer.weight_g.requires_grad
    assert torch.equal(head.last_layer.weight_g, torch.ones(64, 1)) and not head.mlp[0].bias.any()
    assert 0.01 < head.mlp[2].weight.std().item() < 0.03  # truncated normal, std 0.02
    x = torch.randn(5, 32)
    out = head(x)
    assert out.shape == (5, 64)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(bottleneck.norm(dim=-1), torch.ones(5))
    # rows of the last layer have norm g = 1, so every output is a cosine: |out| <= 1, and it is the normalised
    # bottleneck times the row-normalised weight
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(64), atol=1e-6)
    assert torch.allclose(out, bottleneck @ F.normalize(head.last_layer.weight_v, dim=1).T, atol=1e-6)
    assert sorted(DINOHead(32, 64, use_bn=True, hidden_dim=48, bottleneck_dim=8).state_dict())[:3] == [
        "last_layer.weight_g", "last_layer.weight_v", "mlp.0.bias"]
    assert isinstance(DINOHead(32, 64, use_bn=True).mlp[1], nn.BatchNorm1d)
    assert DINOHead(32, 64, nlayers=1, bottleneck_dim=8).mlp.weight.shape == (8, 32)
    assert DINOHead(32, 64, norm_last_layer=False).last_layer.weight_g.requires_grad


def test_weight_norm_layer_has_torchs_keys_and_function():
    """Official checkpoints were written by torch's hook-based weight_norm: same keys, same function."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = nn.utils.weight_norm(nn.Linear(8, 12, bias=False))
    with torch.no_grad():
        reference.weight_g.mul_(torch.rand(12, 1) + 0.5)
    ours = WeightNormLinear(8, 12)
    assert ours.load_state_dict(reference.state_dict()) is not None
    assert sorted(ours.state_dict()) == ["weight_g", "weight_v"]
    x = torch.randn(3, 8)
    assert torch.equal(ours(x), reference(x))
    parametrized = nn.utils.parametrizations.weight_norm(nn.Linear(8, 12, bias=False))
    parametrized.load_state_dict(ours.state_dict())  # torch's compatibility hook reads the same layout
    assert torch.allclose(parametrized(x), ours(x))
    import copy
    assert torch.equal(copy.deepcopy(ours)(x), ours(x))  # unlike torch's hook-based weight_norm


def test_networks_backbone_heads_and_the_teacher_starts_as_the_student():
    model = tiny()
    vit = model.student.backbone
    assert isinstance(vit, DINOPositionViT) and vit.blocks[0].attn.qkv.bias is not None and vit.norm.eps == 1e-6
    assert 0.01 < vit.cls_token.std().item() < 0.03  # DINO's init (timm's own gives the CLS token std 1e-6)
    for (ns, ps), (nt, pt) in zip(model.student.named_parameters(), model.teacher.named_parameters()):
        assert ns == nt and torch.equal(ps, pt) and not pt.requires_grad
    assert model.feature_encoder() is model.teacher.backbone
    assert {k.split(".")[0] for k in model.state_dict()} == {"student", "teacher", "dino_loss"}
    cfg = parse_config(DINOConfig, ["--config", "dino_imagenet_vit_small"], "pretrain", "")
    assert DINO.backbone_kwargs(cfg)["num_heads"] == DINO_HEADS["vit_small"] == 6
    assert get_method("dino") is DINO


def test_dino_position_resampling():
    torch.manual_seed(0)
    vit = build_backbone(**TINY, pos_interpolation="dino")
    table = vit.pos_embed
    assert dino_resample_pos_embed(table, 4, 4) is table  # native grid: untouched
    grid = table[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(2.1 / 4, 3.1 / 4), mode="bicubic").permute(0, 2, 3, 1)
    resampled = dino_resample_pos_embed(table, 2, 3)
    assert torch.equal(resampled[:, 0], table[:, 0]) and torch.equal(resampled[:, 1:], expected.reshape(1, 6, 32))
    plain = build_backbone(**TINY)
    plain.load_state_dict(vit.state_dict())
    big, small = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
    assert torch.equal(cls_features(plain)(big), cls_features(vit)(big))
    assert not torch.allclose(cls_features(plain)(small), cls_features(vit)(small), atol=1e-4)  # timm antialiases


def test_multi_crop_network_runs_the_head_once_on_all_crops_in_order():
    model = tiny(use_bn=True).train()
    views = crops()
    out = model.student(views)
    assert out.shape == (4 * 4, 64)
    features = torch.cat([cls_features(model.student.backbone)(v) for v in views])
    assert torch.allclose(out, model.student.head(features), atol=1e-5)  # one BatchNorm batch over all crops
    per_crop = torch.cat([model.student.head(cls_features(model.student.backbone)(v)) for v in views])
    assert not torch.allclose(out, per_crop, atol=1e-3)


# ---------------------------------------------------------------------------------------------- loss, centre

def direct_loss(student, teacher, center, student_temp, teacher_temp, num_crops):
    s = student.chunk(num_crops)
    t = teacher.chunk(2)
    terms = []
    for i in range(2):
        q = torch.softmax((t[i] - center) / teacher_temp, dim=-1)
        for j in range(num_crops):
            if i != j:
                log_p = torch.log_softmax(s[j] / student_temp, dim=-1)
                terms.append(-(q * log_p).sum(-1).mean())
    return torch.stack(terms).mean(), len(terms)


def test_loss_is_the_average_cross_entropy_over_pairs_of_different_crops():
    torch.manual_seed(0)
    loss = DINOLoss(16, student_temp=0.1)
    loss.center.copy_(torch.randn(1, 16))
    student, teacher = torch.randn(5 * 3, 16), torch.randn(2 * 3, 16)
    value, probs = loss(student, teacher, 0.05, num_crops=5)
    expected, pairs = direct_loss(student, teacher, loss.center, 0.1, 0.05, 5)
    assert pairs == 8 and value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    # each ingredient matters: the centre, the teacher temperature, skipping j == i
    assert value.item() != pytest.approx(direct_loss(student, teacher, 0 * loss.center, 0.1, 0.05, 5)[0].item(),
                                         rel=1e-3)
    assert value.item() != pytest.approx(direct_loss(student, teacher, loss.center, 0.1, 0.07, 5)[0].item(), rel=1e-3)
    with_same_view = sum(direct_loss(student, teacher, loss.center, 0.1, 0.05, 5)[0].item() * 8 for _ in [0])
    assert value.item() * 8 == pytest.approx(with_same_view, rel=1e-6)
    assert torch.equal(loss.center, loss.center.clone())  # forward leaves the centre alone


def test_center_update_is_an_ema_of_the_batch_mean():
    loss = DINOLoss(4, center_momentum=0.9)
    loss.center.fill_(1.0)
    teacher = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    loss.update_center(teacher)
    assert torch.allclose(loss.center, 0.9 * torch.ones(1, 4) + 0.1 * teacher.mean(0, keepdim=True))
    assert "center" in dict(loss.named_buffers())


def test_the_step_centres_on_the_teacher_outputs_and_logs_the_teacher_entropy():
    model = tiny()
    with torch.no_grad():
        model.dino_loss.center.normal_()
        before = model.dino_loss.center.clone()
        teacher = model.teacher(crops()[:2])
    out = model(crops(), values(temp=0.05))
    assert torch.allclose(model.dino_loss.center, 0.9 * before + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)
    probs = torch.softmax((teacher - before) / 0.05, dim=-1)
    entropy = -torch.xlogy(probs, probs).sum(-1).mean()
    assert out.terms["teacher_entropy"].item() == pytest.approx(entropy.item(), rel=1e-4)
    assert 0 < out.terms["teacher_entropy"].item() < math.log(64)


# ---------------------------------------------------------------------------------------------- the step

def test_teacher_is_the_ema_of_the_student_after_the_optimiser_step():
    model = tiny()
    with torch.no_grad():  # a teacher that differs from the student
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    student_before = [p.clone() for p in model.student.parameters()]
    step(task_for(model, values(momentum=0.9)), crops())
    student_after = list(model.student.parameters())
    for t0, s0, s1, t1 in zip(teacher_before, student_before, student_after, model.teacher.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s1.detach(), atol=1e-7)  # the student AFTER the step
    moved = [not torch.allclose(t1, 0.9 * t0 + 0.1 * s0, atol=1e-7)
             for t0, s0, t1 in zip(teacher_before, student_before, model.teacher.parameters())]
    assert any(moved)


def test_last_layer_is_frozen_in_the_first_epochs_and_its_norm_only_trains_when_asked():
    for norm_last_layer in (True, False):
        model = tiny(norm_last_layer=norm_last_layer)
        names = {id(p): n for n, p in model.named_parameters()}
        task = task_for(model, values(frozen=True))
        grouped = {names[id(p)] for g in task.optimizer.param_groups for p in g["params"]}
        assert ("student.head.last_layer.weight_g" in grouped) == (not norm_last_layer)
        assert not any(n.startswith("teacher.") for n in grouped)
        last = model.student.head.last_layer
        g0, v0, mlp0 = last.weight_g.clone(), last.weight_v.clone(), model.student.head.mlp[0].weight.clone()
        step(task, crops())  # epoch 0: frozen (no gradient, no update, no weight decay)
        assert torch.equal(last.weight_g, g0) and torch.equal(last.weight_v, v0)
        assert not torch.equal(model.student.head.mlp[0].weight, mlp0)
        task.schedules = Fixed(values(frozen=False))
        step(task, crops(), at=1)  # later: trained
        assert not torch.equal(last.weight_v, v0)
        assert torch.equal(last.weight_g, g0) == norm_last_layer
        assert torch.allclose(last.weight.norm(dim=1), g0.flatten(), atol=1e-5) == norm_last_layer


def test_gradients_are_clipped_per_tensor():
    a, b, c = (nn.Parameter(torch.zeros(n)) for n in (3, 4, 2))
    a.grad, b.grad, c.grad = torch.tensor([3.0, 4.0, 0.0]), torch.full((4,), 0.1), None
    total = clip_gradients_per_tensor([a, b, c], 1.0)
    assert total == pytest.approx(math.sqrt(25 + 0.04))
    assert torch.allclose(a.grad, torch.tensor([3.0, 4.0, 0.0]) / (5 + 1e-6))  # DINO's factor
    assert torch.equal(b.grad, torch.full((4,), 0.1))  # below the threshold: untouched (a global clip would scale it)
    model = tiny()
    task = task_for(model, values())
    _, scalars = step(task, crops(), clip=1e-3)
    assert scalars["grad_norm"] > 1e-3
    norms = [p.grad.norm().item() for p in model.student.parameters() if p.grad is not None]
    assert max(norms) <= 1e-3 * (1 + 1e-4) and min(norms) > 1e-4  # each tensor clipped on its own


# ---------------------------------------------------------------------------------------------- schedules

def test_schedules_follow_dino():
    schedule = DINOSchedule(steps_per_epoch=10, epochs=20, peak_lr=1e-3, min_lr=1e-6, warmup_epochs=2,
                            weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996, teacher_temp=0.07,
                            warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=4, freeze_last_layer=1)
    first, last = schedule.at(0), schedule.at(199)
    assert first.lr == 0 and schedule.at(19).lr == pytest.approx(1e-3) and schedule.at(20).lr == pytest.approx(1e-3)
    assert schedule.at(10).lr == pytest.approx(1e-3 * 10 / 19)  # np.linspace(0, peak, 20)
    assert 1e-6 < last.lr < 1.1e-6  # the cosine ends one step short of min_lr, as np.arange in the official
    assert first.weight_decay == pytest.approx(0.04) and last.weight_decay == pytest.approx(0.4, rel=1e-3)
    assert first.momentum == pytest.approx(0.996) and last.momentum == pytest.approx(1.0, abs=1e-6)
    assert schedule.at(1).momentum > first.momentum  # per iteration, not per epoch
    temps = [schedule.at(10 * e + 5).teacher_temp for e in range(6)]
    assert temps == pytest.approx(list(np.linspace(0.04, 0.07, 4)) + [0.07, 0.07])  # per epoch
    assert schedule.at(9).teacher_temp == schedule.at(0).teacher_temp
    assert [schedule.at(s).last_layer_frozen for s in (0, 9, 10)] == [True, True, False]
    assert DINOSchedule(10, 5, 1.0, warmup_teacher_temp_epochs=0).at(0).teacher_temp == 0.04


# ---------------------------------------------------------------------------------------------- views

def test_transform_makes_two_global_and_the_local_crops_from_torchs_generator_only():
    transform = DINOTransform(32, local_crops_number=3, local_crop_size=16)
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    torch.manual_seed(3)
    random.seed(0)
    np.random.seed(0)
    views = transform(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    torch.manual_seed(3)
    random.seed(1)  # Python's and numpy's generators do not matter
    np.random.seed(1)
    again = transform(image)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    torch.manual_seed(4)
    assert not torch.equal(transform(image)[0], views[0])
    assert len(DINOTransform(32, local_crops_number=0)(image)) == 2


# ---------------------------------------------------------------------------------------------- recipes, run

@pytest.mark.parametrize("name", [n for n in recipe_names("pretrain") if n.startswith("dino_")])
def test_recipes_resolve(name):
    paper = parse_config(DINOConfig, ["--config", name], "pretrain", "")
    official = parse_config(DINOConfig, ["--config", name, "--preset", "official"], "pretrain", "")
    assert paper.method == official.method == "dino" and paper.clip_grad == 3.0
    DINO.check_config(paper, paper.batch_size)
    if "imagenet" in name:
        assert (paper.img_size, paper.patch_size, paper.batch_size, official.amp) == (224, 16, 1024, "fp16")
        assert (paper.local_crops_number, paper.local_crop_size, paper.out_dim) == (8, 96, 65536)
    if name == "dino_imagenet_vit_small":
        assert (paper.epochs, paper.warmup_teacher_temp, paper.teacher_temp, paper.warmup_teacher_temp_epochs,
                paper.norm_last_layer) == (300, 0.04, 0.07, 30, False)
    if name == "dino_imagenet_vit_base":
        assert (paper.epochs, paper.teacher_temp, paper.warmup_teacher_temp_epochs, paper.norm_last_layer) == (
            100, 0.04, 0, True)
    if "cifar" in name:
        assert (paper.img_size, paper.patch_size, paper.local_crop_size, paper.epochs, paper.batch_size) == (
            32, 2, 16, 800, 512)
        assert paper.norm_last_layer == ("tiny" in name)
        assert dataclasses.replace(official, preset="paper") == paper  # no official DINO CIFAR code


def test_bad_settings_are_one_line_errors():
    cfg = parse_config(DINOConfig, ["--config", "dino_demo", "--local-crop-size", "12"], "pretrain", "")
    with pytest.raises(ConfigError, match="local_crop_size 12"):
        DINO.check_config(cfg, 256)
    with pytest.raises(ConfigError, match="divisible"):
        DINO.check_config(parse_config(DINOConfig, ["--config", "dino_demo", "--embed-dim", "30"], "pretrain", ""),
                          256)


def test_a_run_stopped_mid_epoch_resumes_to_the_identical_weights_and_centre(tmp_path, toy_data):
    def run(name, *extra):
        out = tmp_path / name
        assert main_pretrain.main(FLAGS + ["--data-path", str(toy_data), "--output-dir", str(out), *extra]) == 0
        return torch.load(out / "checkpoint.pth", weights_only=True)

    straight = run("straight")
    assert straight["global_step"] == 8 and straight["method"] == "dino"
    assert straight["backbone"]["num_heads"] == 2 and straight["model"]["dino_loss.center"].abs().sum() > 0
    stopped = run("pieces", "--stop-after-steps", "3")
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (0, 3)
    resumed = run("pieces")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lines = [json.loads(line) for line in (tmp_path / "straight" / "log.txt").read_text().splitlines()]
    assert {"train_loss", "train_teacher_entropy", "train_grad_norm"} <= set(lines[0])


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_centre_on_the_teacher_outputs_of_both(tmp_path, toy_data):
    """The centre is all-reduced: two processes of 8 images end where one process of the same 16 images ends
    (the sampler gives the two ranks the two halves of the single process's batch; per-image augmentation)."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    # without BatchNorm in the head: on the CPU each process keeps its own BatchNorm statistics (no SyncBatchNorm)
    flags = FLAGS + ["--data-path", str(toy_data), "--epochs", "1", "--no-use-bn-in-head"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "main_pretrain.py", *flags, "--output-dir", str(tmp_path / "two")], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert main_pretrain.main(flags + ["--output-dir", str(tmp_path / "one")]) == 0
    two = torch.load(tmp_path / "two" / "checkpoint.pth", weights_only=True)["model"]
    one = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=True)["model"]
    assert torch.allclose(two["dino_loss.center"], one["dino_loss.center"], rtol=1e-4, atol=1e-6)
    for key in ("student.backbone.blocks.0.attn.qkv.weight", "teacher.head.mlp.0.weight"):
        assert torch.allclose(two[key], one[key], rtol=1e-3, atol=1e-5), key
