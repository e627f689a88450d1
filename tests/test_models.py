"""Backbone, heads, momentum encoder, fused backbone passes, and the schedules."""

from __future__ import annotations

import math

import pytest
import torch

from patchmix.loss import Encodings, LossWeights, Needed, PatchMixLoss, needed_encodings
from patchmix.methods import PatchMix
from patchmix.mix import patch_mix
from patchmix.models import build_backbone
from patchmix.schedules import MomentumStepValues, Schedules, warmup_cosine

TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def tiny_model(**kwargs) -> PatchMix:
    options = dict(drop_path_rate=0.0, hidden_dim=64, out_dim=16)
    options.update(kwargs)
    return PatchMix(TINY, **options)


def encoded(encodings: Encodings) -> dict[str, torch.Tensor]:
    return {name: value for name, value in vars(encodings).items() if value is not None}


@pytest.mark.parametrize("arch,dim,heads", [("vit_tiny", 192, 3), ("vit_small", 384, 12), ("vit_base", 768, 12)])
def test_architectures_match_the_official_code(arch, dim, heads):
    model = build_backbone(arch, img_size=32, patch_size=2)
    assert model.embed_dim == dim and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == heads
    assert model.pos_embed.shape == (1, 257, dim)
    assert model.blocks[0].attn.qkv.bias is not None


def test_vit_small_parameter_count_matches_the_paper():
    params = sum(p.numel() for p in build_backbone("vit_small", 224, 16).parameters())
    assert params / 1e6 == pytest.approx(21.6, abs=0.1)  # paper: ViT-S/16 21.6M


def test_moco_v3_initialisation():
    torch.manual_seed(0)
    model = build_backbone("vit_small", img_size=32, patch_size=4)
    qkv = model.blocks[0].attn.qkv.weight
    bound = math.sqrt(6.0 / (qkv.shape[0] // 3 + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    proj = model.patch_embed.proj.weight
    bound = math.sqrt(6.0 / (3 * 4 * 4 + 384))
    assert proj.abs().max() <= bound and proj.abs().max() > 0.9 * bound
    assert torch.all(model.patch_embed.proj.bias == 0) and torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert model.cls_token.std() < 1e-5


def test_backbone_returns_the_cls_token_after_the_final_norm():
    model = build_backbone(**TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_features(x)
    assert torch.allclose(model(x), tokens[:, 0])
    # other resolutions (local crops) work through timm's position-table resampling
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 32)


def test_state_dict_keys_follow_the_official_layout():
    keys = set(tiny_model().state_dict())
    for prefix in ("base_encoder", "momentum_encoder"):
        assert {f"{prefix}.cls_token", f"{prefix}.pos_embed", f"{prefix}.patch_embed.proj.weight",
                f"{prefix}.head.0.weight", f"{prefix}.head.1.running_mean", f"{prefix}.head.3.weight",
                f"{prefix}.head.6.weight", f"{prefix}.head.7.running_var"} <= keys
        assert f"{prefix}.head.7.weight" not in keys  # last BN has no affine parameters
        assert f"{prefix}.head.0.bias" not in keys
    assert {"predictor.0.weight", "predictor.1.weight", "predictor.3.weight", "predictor.4.running_mean"} <= keys
    no_momentum = set(tiny_model(use_momentum=False).state_dict())
    assert not any(k.startswith("momentum_encoder") for k in no_momentum)


def test_momentum_encoder_starts_equal_and_follows_the_ema():
    model = tiny_model()
    for online, momentum in zip(model.base_encoder.parameters(), model.momentum_encoder.parameters()):
        assert torch.equal(online, momentum) and not momentum.requires_grad
    with torch.no_grad():
        for p in model.base_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    model.update_teacher(MomentumStepValues(lr=0.0, weight_decay=0.0, momentum=0.9, temperature=0.2))
    for old, new, online in zip(before, model.momentum_encoder.parameters(), model.base_encoder.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * online, atol=1e-6)


def _step_outputs(model, fuse, seed=0):
    torch.manual_seed(seed)
    model.fuse_backbone = fuse
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    x1m, m2o, m2m = patch_mix(x1, 2, 4, torch.Generator().manual_seed(1))
    x2m = patch_mix(x2, 2, 4, torch.Generator().manual_seed(2))[0]
    local = torch.randn(12, 3, 8, 8)
    local_mixed = torch.randn(12, 3, 8, 8)
    outputs = model.encode(x1, x2, x1m, x2m, local=local, local_mixed=local_mixed)
    loss, _ = PatchMixLoss()(outputs, m2o, m2m, 0.2)
    outputs = encoded(outputs)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return outputs, grads


@pytest.mark.parametrize("use_momentum", [True, False])
def test_fused_backbone_gives_equal_outputs_and_gradients(use_momentum):
    torch.manual_seed(0)
    model = tiny_model(use_momentum=use_momentum)
    fused_out, fused_grads = _step_outputs(model, True)
    split_out, split_grads = _step_outputs(model, False)
    assert fused_out.keys() == split_out.keys()
    for name in fused_out:
        assert torch.allclose(fused_out[name], split_out[name], atol=1e-5), name
    assert fused_grads.keys() == split_grads.keys() and len(fused_grads) > 0
    for name in fused_grads:
        assert torch.allclose(fused_grads[name], split_grads[name], atol=1e-5, rtol=1e-4), name


def test_no_momentum_variant_takes_view1_key_from_the_gradient_pass():
    torch.manual_seed(0)
    model = tiny_model(use_momentum=False)
    x = torch.randn(5, 3, 16, 16)
    out = model.encode(x, x, x, x, needs=["q1", "k1"])
    assert not out.k1.requires_grad
    projection = model.base_encoder(x)
    assert torch.allclose(out.q1, model.predictor(projection), atol=1e-5)
    assert torch.allclose(out.k1, projection, atol=1e-5)


def test_switched_off_terms_skip_their_passes():
    assert needed_encodings(LossWeights(1, 0, 0), False) == Needed(q1=True, k2=True)
    assert needed_encodings(LossWeights(0, 0.5, 0), False) == Needed(q2_mixed=True, k1=True)
    assert needed_encodings(LossWeights(1, 0.5, 0.5), False) == Needed(True, True, True, True, True)
    assert needed_encodings(LossWeights(0, 0.5, 0), True) == Needed(q2_mixed=True, k1=True, k2=True)
    model = tiny_model()
    x = torch.randn(5, 3, 16, 16)
    out = model.encode(x, x, None, x, needs=needed_encodings(LossWeights(1, 0.5, 0), False).names())
    assert set(encoded(out)) == {"q1", "k2", "q2_mixed", "k1"}


def test_optimizer_groups_decay_weights_not_biases_or_norms():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.param_groups(0.04))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["apply_weight_decay"] for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if not g["apply_weight_decay"] for p in g["params"]}
    assert "base_encoder.blocks.0.attn.qkv.weight" in decayed and "predictor.0.weight" in decayed
    assert "base_encoder.cls_token" in decayed and "base_encoder.pos_embed" in decayed  # official >=2-D rule
    assert "base_encoder.blocks.0.attn.qkv.bias" in plain and "base_encoder.norm.weight" in plain
    assert "predictor.1.weight" in plain
    assert not any(n.startswith("momentum_encoder") for n in decayed | plain)
    # the split does not depend on the value: a run starting at weight decay 0 still follows its schedule
    groups = model.param_groups(0.0)
    assert [g["apply_weight_decay"] for g in groups].count(True) == 1
    assert all(g["weight_decay"] == 0.0 for g in groups)


def _schedules(**kwargs):
    options = dict(steps_per_epoch=10, epochs=4, peak_lr=1.0, min_lr=0.01, warmup_epochs=1, weight_decay=0.04,
                   weight_decay_end=0.4, momentum=0.996, temperature=0.2, warmup_temperature=0.1,
                   warmup_temperature_epochs=2)
    options.update(kwargs)
    return Schedules(**options)


def test_learning_rate_warmup_then_cosine():
    s = _schedules()
    # DINO's linspace warm-up: 0 at step 0, the peak at the last warm-up step
    assert s.lr(0) == 0.0 and s.lr(3) == pytest.approx(3 / 9) and s.lr(9) == pytest.approx(1.0)
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(25) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert s.lr(40) == pytest.approx(0.01)
    assert all(s.lr(i) >= s.lr(i + 1) for i in range(10, 40))
    assert warmup_cosine(0, 10, 0, 1.0, 0.0) == 1.0


def test_weight_decay_temperature_and_momentum_endpoints():
    s = _schedules()
    assert s.wd(0) == pytest.approx(0.04) and s.wd(40) == pytest.approx(0.4)
    assert s.temp(0) == pytest.approx(0.1) and s.temp(10) == pytest.approx(0.15) and s.temp(30) == 0.2
    assert s.ema_momentum(0) == pytest.approx(0.996) and s.ema_momentum(40) == pytest.approx(1.0)


def test_momentum_changes_every_step_unless_the_official_per_epoch_bug_is_on():
    fixed = _schedules()
    values = [fixed.ema_momentum(i) for i in range(40)]
    assert all(a < b for a, b in zip(values, values[1:]))
    official = _schedules(momentum_per_epoch=True)
    per_epoch = [official.ema_momentum(i) for i in range(40)]
    assert len(set(per_epoch[:10])) == 1 and len(set(per_epoch)) == 4
    # the official code evaluates the cosine at epoch + 1/steps_per_epoch
    assert per_epoch[15] == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi * 1.1 / 4)))
