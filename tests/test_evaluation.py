"""kNN, linear-probe and fine-tuning scripts on toy data: known answers, equivalences, outputs and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from evalkit import TINY, TINY_FLAGS, save_official_pretraining, save_ours, tiny_pretraining_model

import main_finetune
import main_knn
import main_linear
from patchmix.config import parse_config, recipe_names
from patchmix.data import build_dataset, eval_transform
from patchmix.evaluation.finetune import FinetuneConfig
from patchmix.evaluation.knn import KnnConfig
from patchmix.evaluation.linear import LinearConfig
from patchmix.knn import weighted_knn


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------------------
# kNN


def test_weighted_knn_known_answer():
    """One very close neighbour of class 0 outvotes two farther ones of class 1: exp(s/T) weighting."""
    s = math.sqrt(1 - 0.99 ** 2)
    bank = torch.tensor([[0.99, s], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 1, 2])
    queries, labels = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    result = weighted_knn(bank, bank_labels, queries, labels, num_classes=3, ks=(1, 3), temperature=0.07)
    assert result[1]["top1"] == 100.0 and result[3]["top1"] == 100.0
    # Without effective weighting (huge T) the plain majority of the 3 neighbours picks class 1 for query 0.
    flat = weighted_knn(bank, bank_labels, queries, labels, num_classes=3, ks=(3,), temperature=1e4)
    assert flat[3] == {"top1": 50.0, "top5": 100.0}
    half = weighted_knn(bank.half(), bank_labels, queries, labels, num_classes=3, ks=(1, 3), chunk_size=1)
    assert half == result


def knn(tmp_path, toy_data, name, *extra):
    out = tmp_path / name
    argv = TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(out), "--batch-size", "32",
                         "--dump-features", str(out / "features.pth"), *extra]
    assert main_knn.main(argv) == 0
    return out, json.loads((out / "results.json").read_text()), load(out / "features.pth")


def test_knn_features_are_timm_cls_features_and_official_files_give_the_same(tmp_path, toy_data):
    import timm
    model = tiny_pretraining_model()
    ours = save_ours(model, tmp_path / "ours.pth")
    out, results, features = knn(tmp_path, toy_data, "ours", "--pretrained-weights", str(ours))
    assert results["headline_k"] == 20 and results["top1"] == results["knn"]["20"]["top1"]
    assert set(results["knn"]) == {"10", "20", "100", "200"} and results["test_images"] == 48
    assert results["weights"]["encoder"] == "momentum_encoder"
    assert (out / "config.json").is_file()

    # The features are timm's CLS token (after the final norm) of the momentum encoder, nothing else.
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                                  patch_size=4, embed_dim=32, depth=2, num_heads=2).eval()
    backbone = {k: v for k, v in model.momentum_encoder.state_dict().items() if not k.startswith("head.")}
    reference.load_state_dict(backbone)
    train = build_dataset("fashion_mnist", str(toy_data), True, eval_transform(16))
    images = torch.stack([train[i][0] for i in range(len(train))])
    with torch.no_grad():
        expected = reference(images)
    assert torch.allclose(features["train_features"], expected, atol=1e-5)

    # The same weights in the official pretraining format (module. prefix, no architecture stored).
    official = save_official_pretraining(model, tmp_path / "official.pth", prefix="module.")
    _, official_results, official_features = knn(tmp_path, toy_data, "official", "--pretrained-weights",
                                                 str(official), "--num-heads", "2")
    assert torch.equal(official_features["train_features"], features["train_features"])
    assert torch.equal(official_features["test_features"], features["test_features"])
    assert official_results["knn"] == results["knn"]

    # Saved features classify to the same numbers without touching the model.
    again = tmp_path / "again"
    assert main_knn.main(TINY_FLAGS + ["--output-dir", str(again), "--load-features",
                                       str(out / "features.pth")]) == 0
    assert json.loads((again / "results.json").read_text())["knn"] == results["knn"]


def test_knn_falls_back_to_the_online_encoder(tmp_path, toy_data, capsys):
    path = save_ours(tiny_pretraining_model(use_momentum=False), tmp_path / "no_momentum.pth")
    _, results, _ = knn(tmp_path, toy_data, "fallback", "--pretrained-weights", str(path), "--fp16-features",
                        "--nb-knn", "5")
    assert "no momentum encoder" in capsys.readouterr().out
    assert results["weights"]["encoder"] == "base_encoder" and results["feature_dtype"] == "float16"
    assert set(results["knn"]) == {"5", "20"}


# ------------------------------------------------------------------------------------------------------------
# Linear probe and fine-tuning


def train(script, tmp_path, toy_data, weights, name, *extra):
    out = tmp_path / name
    argv = TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(out), "--pretrained-weights",
                         str(weights), "--batch-size", "16", "--epochs", "2", *extra]
    assert script.main(argv) == 0
    return out


def assert_same_state(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_linear_probe_outputs_resume_and_frozen_backbone(tmp_path, toy_data, pretrained, capsys):
    straight = train(main_linear, tmp_path, toy_data, pretrained, "straight", "--batchnorm")
    results = json.loads((straight / "results.json").read_text())
    assert results["headline"] == "last epoch" and results["backbone_unchanged"] is True
    assert 1 <= results["best_epoch"] <= 2 and results["best_top1"] >= results["top1"]
    lines = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert results["top1"] == lines[-1]["test_top1"] and results["best_top1"] == max(line["test_top1"] for line in lines)
    assert "sanity check passed" in capsys.readouterr().out
    state = load(straight / "checkpoint.pth")  # weights_only: plain tensors, numbers, strings, dicts
    assert state["epoch"] == 2 and state["kind"] == "linear" and "head.1.weight" in state["model"]
    lines = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and {"train_loss", "test_top1", "train_lr"} <= set(lines[0])
    assert (straight / "best.pth").is_file() and (straight / "config.json").is_file()
    best = load(straight / "best.pth")  # the official scripts read checkpoint['state_dict']
    assert best["state_dict"].keys() == best["model"].keys() == state["state_dict"].keys()
    assert not list(straight.glob(".*tmp*"))

    # Interrupted mid-epoch (96 images, batch 16: 6 steps per epoch), then resumed: identical to the
    # uninterrupted run.
    pieces = train(main_linear, tmp_path, toy_data, pretrained, "pieces", "--batchnorm", "--stop-after-steps", "4")
    mid = load(pieces / "checkpoint.pth")
    assert (mid["epoch"], mid["step_in_epoch"]) == (0, 4) and not (pieces / "results.json").exists()
    train(main_linear, tmp_path, toy_data, pretrained, "pieces", "--batchnorm", "--stop-after-steps", "5")
    assert (load(pieces / "checkpoint.pth")["epoch"], load(pieces / "checkpoint.pth")["step_in_epoch"]) == (1, 3)
    train(main_linear, tmp_path, toy_data, pretrained, "pieces", "--batchnorm")
    assert_same_state(load(pieces / "checkpoint.pth")["model"], state["model"])
    assert json.loads((pieces / "results.json").read_text())["top1"] == results["top1"]

    # The saved probe is a complete classifier: --eval-only reproduces the last epoch's accuracy.
    evaluated = tmp_path / "eval"
    assert main_linear.main(TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(evaluated),
                                          "--pretrained-weights", str(straight / "checkpoint.pth"),
                                          "--eval-only", "--batch-size", "16"]) == 0
    assert json.loads((evaluated / "results.json").read_text())["top1"] == results["top1"]


def test_finetune_with_ema_resumes_exactly(tmp_path, toy_data, pretrained):
    extra = ("--model-ema", "--model-ema-decay", "0.9", "--warmup-epochs", "1", "--crop-padding", "2")
    straight = train(main_finetune, tmp_path, toy_data, pretrained, "straight", *extra)
    results = json.loads((straight / "results.json").read_text())
    assert {"top1", "best_top1", "best_epoch", "ema_top1", "ema_best_top1"} <= set(results)
    state = load(straight / "checkpoint.pth")
    assert state["kind"] == "finetune" and "model_ema" in state and state["epoch"] == 2
    lines = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert "ema_test_top1" in lines[-1]

    pieces = train(main_finetune, tmp_path, toy_data, pretrained, "pieces", *extra, "--stop-after-steps", "8")
    train(main_finetune, tmp_path, toy_data, pretrained, "pieces", *extra)
    resumed = load(pieces / "checkpoint.pth")
    assert_same_state(resumed["model"], state["model"])
    assert_same_state(resumed["model_ema"], state["model_ema"])

    # The EMA weights are a classifier of their own.
    evaluated = tmp_path / "eval_ema"
    assert main_finetune.main(TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(evaluated),
                                            "--pretrained-weights", str(straight / "checkpoint.pth"),
                                            "--checkpoint-key", "model_ema", "--eval-only",
                                            "--batch-size", "16"]) == 0
    assert json.loads((evaluated / "results.json").read_text())["top1"] == results["ema_top1"]


def test_finetune_optimizer_uses_layer_decay_groups(toy_data, pretrained):
    from patchmix.distributed import DistInfo
    from patchmix.evaluation.finetune import Finetune
    from patchmix.weights import load_weights
    cfg = parse_config(FinetuneConfig, ["--config", "demo", "--pretrained-weights", str(pretrained), "--batch-size",
                                        "256", "--base-lr", "1e-3"], kind="finetune", description="")
    recipe = Finetune(cfg, load_weights(str(pretrained)), 10, DistInfo(0, 1, 0, torch.device("cpu")), 4, None,
                      None)
    scales = sorted({round(g["lr_scale"], 6) for g in recipe.optimizer.param_groups})
    depth = TINY["depth"]
    assert scales == sorted({round(0.75 ** (depth + 1 - i), 6) for i in range(depth + 2)})
    decay = {id(p) for g in recipe.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(recipe.model.pos_embed) not in decay and id(recipe.model.cls_token) not in decay
    assert id(recipe.model.blocks[0].attn.qkv.weight) in decay and id(recipe.model.norm.weight) not in decay
    assert recipe.peak_lr == pytest.approx(1e-3)  # vit_tiny base lr 1e-3 at batch 256


# ------------------------------------------------------------------------------------------------------------
# Config modules


@pytest.mark.parametrize("kind,cls", [("knn", KnnConfig), ("linear", LinearConfig), ("finetune", FinetuneConfig)])
def test_every_config_module_parses_and_official_presets_differ(kind, cls):
    names = recipe_names(kind)
    aps = [name for name in names if name.startswith("aps_")]
    assert len(names) - len(aps) == 9 and "demo" in names and len(aps) == (6 if kind == "finetune" else 0)
    for name in aps:  # APS's own fine-tuning recipe: batch 128, lr x batch / 512 (half the base per 256)
        cfg = parse_config(cls, ["--config", name], kind=kind, description="")
        dataset, arch = name.split("_", 2)[1:]
        assert cfg.pretrained_weights == f"aps-{dataset}-{arch.replace('_', '-')}-1600-pretrain"
        official_lr_base = {"vit_tiny": 2e-3, "vit_small": 1e-3, "vit_base": 5e-4}[arch]
        assert cfg.base_lr * cfg.batch_size / 256 == pytest.approx(official_lr_base * 128 / 512)
        assert (cfg.batch_size, cfg.layer_decay, cfg.warmup_epochs, cfg.drop_path) == (128, 1.0, 5, 0.0)
    for name in sorted(set(names) - set(aps)):
        cfg = parse_config(cls, ["--config", name], kind=kind, description="")
        assert cfg.pretrained_weights
        if name != "demo":
            dataset, arch = name.split("_", 1)
            assert cfg.pretrained_weights == f"{dataset}-{arch.replace('_', '-')}-pretrain"
            if kind != "knn":  # the official base learning rate of the architecture, from its recipe
                official = {"linear": {"vit_tiny": 0.05, "vit_small": 0.02, "vit_base": 0.01},
                            "finetune": {"vit_tiny": 1e-3, "vit_small": 5e-4, "vit_base": 5e-4}}[kind]
                assert cfg.base_lr == official[arch], name
    official = parse_config(cls, ["--config", "cifar10_vit_small", "--preset", "official"], kind=kind,
                            description="")
    if kind in ("knn", "linear"):
        assert official.crop_pct == pytest.approx(32 / 36)  # 32 -> 36 -> centre crop 32
    if kind in ("linear", "finetune"):
        assert official.lr_per_epoch
    demo = parse_config(cls, [], kind=kind, description="")
    assert demo.dataset == "fashion_mnist" and demo.pretrained_weights == "output/demo/checkpoint.pth"


# ------------------------------------------------------------------------------------------------------------
# Several processes (torchrun, CPU / gloo)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_gather_the_same_features_and_train_a_probe(tmp_path, toy_data):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    def torchrun(script, *args):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node=2", script, *TINY_FLAGS, "--data-path", str(toy_data), *args],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    weights = save_ours(tiny_pretraining_model(), tmp_path / "ours.pth")
    single, results, features = knn(tmp_path, toy_data, "single", "--pretrained-weights", str(weights))
    torchrun("main_knn.py", "--pretrained-weights", str(weights), "--output-dir", str(tmp_path / "ddp"),
             "--batch-size", "32", "--dump-features", str(tmp_path / "ddp" / "features.pth"))
    gathered = load(tmp_path / "ddp" / "features.pth")
    assert torch.allclose(gathered["train_features"], features["train_features"], atol=1e-6)
    assert torch.equal(gathered["train_labels"], features["train_labels"])
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["knn"] == results["knn"]

    out = tmp_path / "linear_ddp"
    result = torchrun("main_linear.py", "--pretrained-weights", str(weights), "--output-dir", str(out),
                      "--batch-size", "16", "--epochs", "1")
    assert "(8 per process x 2)" in result.stdout and "sanity check passed" in result.stdout
    log = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert log["test_images"] == 48  # the two shards cover the 48 test images exactly once


def test_user_errors_are_reported_in_one_line(tmp_path, toy_data, pretrained, capsys):
    base = TINY_FLAGS + ["--data-path", str(toy_data), "--output-dir", str(tmp_path / "out")]
    assert main_knn.main(base + ["--pretrained-weights", str(tmp_path / "missing.pth")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: weights ") and "not found: no such file" in error and "Traceback" not in error
    assert main_linear.main(base + ["--pretrained-weights", str(pretrained), "--eval-only"]) == 2
    assert "has no classifier head" in capsys.readouterr().err


def test_randaugment_posterize_survives_magnitude_ten():
    """rand-m9-mstd0.5-inc1 reaches magnitude 10 = keep 0 bits, which recent Pillow refuses: black image."""
    from PIL import Image

    from patchmix.evaluation.finetune import finetune_transform
    transform = finetune_transform(FinetuneConfig(), 28)
    randaugment = next(step for step in transform.transforms if hasattr(step, "ops"))
    posterize = next(op for op in randaugment.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0
    assert posterize(Image.new("RGB", (28, 28), (200, 100, 50))).getpixel((0, 0)) == (0, 0, 0)
