"""The benchmark reports sane, self-consistent numbers, and its FLOP count matches the known ViT-S/16 cost."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO_ROOT, TINY_PRETRAIN

sys.path.insert(0, str(REPO_ROOT / "tools"))
import benchmark  # noqa: E402


def test_vit_small_forward_flops_match_the_usual_4_6_gmacs():
    backbone = benchmark.vit_forward_flops(384, 12, 224, 16, hidden_dim=0, out_dim=0, proj_layers=2)
    assert backbone / 2 / 1e9 == pytest.approx(4.6, abs=0.05)


def test_step_flops_follow_the_passes_of_the_loss():
    from patchmix.methods import PatchMixConfig as PretrainConfig
    cfg = PretrainConfig(arch="vit_tiny", img_size=32, patch_size=2)
    online = benchmark.vit_forward_flops(192, 12, 32, 2, 4096, 256, 3, 2)
    key = benchmark.vit_forward_flops(192, 12, 32, 2, 4096, 256, 3, 0)
    assert benchmark.step_flops_per_image(cfg) == pytest.approx(3 * 2 * online + 3 * key)
    baseline = PretrainConfig(arch="vit_tiny", img_size=32, patch_size=2, m2o_weight=0, m2m_weight=0)
    assert benchmark.step_flops_per_image(baseline) == pytest.approx(3 * online + key)


def test_benchmark_reports_consistent_numbers(tmp_path, toy_data, capsys):
    out = tmp_path / "bench.json"
    args = ["--steps", "2", "--warmup", "1", "--peak-tflops", "1.0", "--json", str(out), "--data", "real",
            *TINY_PRETRAIN, "--data-path", str(toy_data), "--no-fuse-backbone"]
    assert benchmark.main(args) == 0
    results = json.loads(out.read_text())
    assert results["batch_size"] == 16 and results["fuse_backbone"] is False
    assert results["step_ms"] == pytest.approx(1000 * 16 / results["images_per_second"])
    shares = results["part_share_percent"]
    assert set(shares) == {"data_loading", "data_to_device", "per_batch", "schedule", "mixer", "forward",
                           "backward", "optimizer"}
    assert sum(shares.values()) == pytest.approx(100.0)
    assert results["mfu_percent"] == pytest.approx(100 * results["achieved_tflops"] / 1.0)
    assert results["achieved_tflops"] == pytest.approx(
        results["gflops_per_image"] * results["images_per_second"] / 1e3)
    assert "images/s" in capsys.readouterr().out


def test_both_fusions_are_measured_in_interleaved_rounds(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--steps", "1", "--warmup", "1", "--rounds", "2", "--json", str(out), *TINY_PRETRAIN]
    assert benchmark.main(args) == 0
    fused, unfused = json.loads(out.read_text())
    assert (fused["fuse_backbone"], unfused["fuse_backbone"]) == (True, False)
    for result in (fused, unfused):
        assert len(result["rounds_images_per_second"]) == 2
        assert min(result["rounds_images_per_second"]) <= result["images_per_second"] <= max(
            result["rounds_images_per_second"])
    ratio = fused["images_per_second"] / unfused["images_per_second"]
    assert f"fused / unfused images/s: {ratio:.3f}" in capsys.readouterr().out


def test_nested_parts_are_not_counted_twice():
    import time

    import torch
    timer = benchmark.PartTimer(torch.device("cpu"))
    with timer("outer"):
        time.sleep(0.02)
        with timer("inner"):
            time.sleep(0.05)
    assert timer.seconds["inner"] >= 0.05 and 0.02 <= timer.seconds["outer"] < 0.045


def test_aps_is_measured_with_its_samplings(tmp_path, capsys):
    out = tmp_path / "aps.json"
    args = ["--steps", "1", "--warmup", "1", "--json", str(out), "--config", "aps_demo", "--img-size", "16",
            "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--hidden-dim", "64",
            "--out-dim", "32", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--nsampling", "2"]
    assert benchmark.main(args) == 0
    results = json.loads(out.read_text())
    assert results["method"] == "aps" and results["optimizer_steps_per_batch"] == 2
    assert results["fuse_backbone"] is None and "per_batch" in results["part_share_percent"]  # the sampling
    view = benchmark.vit_forward_flops(32, 2, 16, 4, 64, 32, 3, 3, tokens=4 + 1)  # 4 of 16 patches + CLS
    assert results["gflops_per_image"] == pytest.approx(3 * 2 * view * 2 / 1e9)


def test_selfpatch_is_measured_with_its_neighbour_matching_and_counted_like_torch_counts(tmp_path):
    """The FLOP count of a SelfPatch step (student on every crop with its patch head, teacher with the neighbour
    matching and aggregation of every patch) is torch's operator-level count of the same step (attention as plain
    matrix products, which torch counts) plus the input gradient of the patch embedding, which the count's
    "backward = 2 x forward" includes and no step computes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to other jobs on the same cores
    try:
        _selfpatch_benchmark_and_flops(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _selfpatch_benchmark_and_flops(tmp_path):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from patchmix.config import parse_config
    from patchmix.methods import SelfPatch, SelfPatchConfig
    from patchmix.methods.dino import DINOStepValues

    tiny = ["--config", "selfpatch_demo", "--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth",
            "2", "--num-heads", "2", "--hidden-dim", "32", "--bottleneck-dim", "16", "--out-dim", "64",
            "--out-dim-selfpatch", "32", "--local-crop-size", "12", "--batch-size", "4", "--num-workers", "0",
            "--device", "cpu"]
    out = tmp_path / "selfpatch.json"
    assert benchmark.main(["--steps", "1", "--warmup", "1", "--json", str(out), *tiny]) == 0
    results = json.loads(out.read_text())
    assert results["method"] == "selfpatch"
    assert {"neighbour_matching", "neighbour_aggregation", "teacher", "student"} <= set(results["part_share_percent"])
    cfg = parse_config(SelfPatchConfig, tiny, "pretrain", "")
    model = SelfPatch.from_config(cfg)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    views = [torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 12, 12)] * cfg.local_crops_number
    with FlopCounterMode(display=False) as counter:
        model(views, DINOStepValues(1e-3, 0.04, 0.99, 0.04, False)).loss.backward()
    counted = benchmark.step_flops_per_image(cfg)
    assert results["gflops_per_image"] == pytest.approx(counted / 1e9)
    patch_embedding = sum(2.0 * (size // 4) ** 2 * 3 * 4 * 4 * 32 for size in (16, 16, 12, 12))
    assert counter.get_total_flops() / 4 == pytest.approx(counted - patch_embedding, rel=1e-9)


def test_a_configuration_main_pretrain_refuses_is_one_line_here_too(capsys):
    """A batch too small for the mixer is refused before any step, in one line (exit 2), not a traceback."""
    assert benchmark.cli(["--config", "demo", "--batch-size", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the batch per process (2)")
