"""End-to-end pretraining on a toy dataset: outputs, exact resume, refusal to mix runs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TINY_PRETRAIN

import main_pretrain


def run(tmp_path, toy_data, name, *extra):
    out = tmp_path / name
    argv = TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out), *extra]
    assert main_pretrain.main(argv) == 0
    return out


def refused(tmp_path, toy_data, name, capsys, *extra) -> str:
    """Run a command that must fail with a one-line error; return that line."""
    out = tmp_path / name
    capsys.readouterr()
    assert main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "Traceback" not in error
    return error


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_outputs_of_a_run(tmp_path, toy_data):
    out = run(tmp_path, toy_data, "run")
    state = load(out / "checkpoint.pth")  # weights_only=True: plain tensors, numbers, strings, dicts
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0 and state["global_step"] == 8
    assert {"model", "optimizer", "scaler", "rng", "config", "backbone"} <= set(state)
    assert state["backbone"] == {"arch": "vit_tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32,
                                 "depth": 2, "num_heads": 2}
    assert (out / "checkpoint_0001.pth").is_file() and (out / "checkpoint_0002.pth").is_file()
    assert not list(out.glob(".*tmp*")), "no temporary files are left behind"
    config = json.loads((out / "config.json").read_text())
    assert config["num_mix"] == 3 and config["img_size"] == 16
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"train_loss", "train_o2o", "train_m2o", "train_m2m", "train_lr"} <= set(lines[0])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # the momentum encoder moved away from its initial copy but is not the online encoder
    model = state["model"]
    assert not torch.equal(model["base_encoder.blocks.0.attn.qkv.weight"],
                           model["momentum_encoder.blocks.0.attn.qkv.weight"])


def test_tensorboard_has_every_scalar(tmp_path, toy_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = run(tmp_path, toy_data, "tb", "--epochs", "1")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("loss", "o2o", "m2o", "m2m", "lr", "weight_decay", "momentum", "temperature"):
        assert f"train/{name}" in tags
    assert len(events.Scalars("train/loss")) == 4


def test_interrupted_run_resumes_to_the_identical_state(tmp_path, toy_data):
    """Stop after 3 steps (mid-epoch), then after 6 more calls' worth, then finish: every tensor of the final
    checkpoint equals the uninterrupted run's."""
    straight = load(run(tmp_path, toy_data, "straight") / "checkpoint.pth")
    out = run(tmp_path, toy_data, "pieces", "--stop-after-steps", "3")
    mid = load(out / "checkpoint.pth")
    assert (mid["epoch"], mid["step_in_epoch"]) == (0, 3)
    run(tmp_path, toy_data, "pieces", "--stop-after-steps", "2")  # crosses the epoch boundary
    assert (load(out / "checkpoint.pth")["epoch"], load(out / "checkpoint.pth")["step_in_epoch"]) == (1, 1)
    resumed = load(run(tmp_path, toy_data, "pieces") / "checkpoint.pth")
    assert resumed["global_step"] == straight["global_step"] == 8
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for (ka, a), (kb, b) in zip(straight["optimizer"]["state"].items(), resumed["optimizer"]["state"].items()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    lines = (out / "log.txt").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_step_budget_ending_on_an_epoch_boundary_stops_there(tmp_path, toy_data, capsys):
    out = run(tmp_path, toy_data, "boundary", "--stop-after-steps", "4", "--knn-eval")
    state = load(out / "checkpoint.pth")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert "Run the same command again to resume" in capsys.readouterr().out
    assert not (out / "knn.json").exists()  # the run is not finished: no final evaluation yet


def test_different_config_in_the_same_directory_is_refused(tmp_path, toy_data, capsys):
    run(tmp_path, toy_data, "run", "--epochs", "1")
    error = refused(tmp_path, toy_data, "run", capsys, "--epochs", "1", "--num-mix", "2")
    assert re.search("different config \\(num_mix: 3 -> 2\\).*--allow-config-change", error)
    run(tmp_path, toy_data, "run", "--epochs", "1", "--num-workers", "1")  # run-only settings may change


def test_knn_report_prints_learned_and_random(tmp_path, toy_data, capsys):
    out = run(tmp_path, toy_data, "knn", "--epochs", "1", "--knn-eval")
    text = capsys.readouterr().out
    assert "learned features:" in text and "random-init features:" in text
    report = json.loads((out / "knn.json").read_text())
    assert report["test_images"] == 48 and report["train_images"] == 96
    for name, key in (("learned features:    ", "learned_top1"), ("random-init features:", "random_init_top1")):
        assert f"{name} top-1 {report[key]:.2f}%" in text
        assert (report[key] * 48 / 100) == pytest.approx(round(report[key] * 48 / 100))  # a count of 48 images


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "4", "--num-mix", "3"], "smaller than 2\\*num_mix-1 = 5"),
    (["--img-size", "18"], "img_size 18 is not divisible by patch_size 4"),
    (["--num-mix", "0"], "--num-mix 0: it must be >= 1"),
    (["--batch-size", "512"], "fewer than one batch of 512"),
])
def test_bad_settings_fail_before_training(tmp_path, toy_data, capsys, args, message):
    assert re.search(message, refused(tmp_path, toy_data, "bad", capsys, *args))
    assert not (tmp_path / "bad" / "checkpoint.pth").exists()


@pytest.mark.parametrize("variant", [
    ["--no-use-momentum"],                                                   # official ViT-T code
    ["--local-crops-number", "2", "--local-crop-size", "8"],                 # official ImageNet multi-crop
    ["--amp", "bf16", "--clip-grad", "1.0"],
    ["--preset", "official", "--no-fuse-backbone"],
    ["--num-mix", "1", "--m2m-weight", "0"],                                 # the m = 1 baseline
])
def test_variants_train(tmp_path, toy_data, variant):
    out = run(tmp_path, toy_data, "variant", "--epochs", "1", *variant)
    state = load(out / "checkpoint.pth")
    has_momentum = any(k.startswith("momentum_encoder.") for k in state["model"])
    assert has_momentum == ("--no-use-momentum" not in variant)
    line = json.loads((out / "log.txt").read_text().splitlines()[0])
    assert all(torch.isfinite(torch.tensor(v)) for k, v in line.items() if k.startswith("train_"))
    if "--local-crops-number" in variant:
        assert "train_local_o2o" in line and "train_local_m2o" in line
    if "--clip-grad" in variant:
        assert line["train_grad_norm"] > 0
    if "--m2m-weight" in variant:
        assert "train_m2m" not in line


def test_explicit_resume_path(tmp_path, toy_data):
    first = run(tmp_path, toy_data, "first", "--epochs", "1")
    out = run(tmp_path, toy_data, "second", "--resume", str(first / "checkpoint.pth"))
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [2]  # epoch 1 came from the other run's checkpoint
