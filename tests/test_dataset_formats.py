"""The real dataset paths end to end: CIFAR-10 in torchvision's pickle format and an ImageNet-style folder tree,
each through pretraining with its recipe (shrunk by flags) and the kNN evaluation of the checkpoint."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets.cifar
from conftest import assert_run_header
from PIL import Image

import main_knn
import main_pretrain
from patchmix.data import build_dataset

# A ViT small enough for a unit test; everything else comes from the recipe.
TINY_MODEL = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--hidden-dim", "64", "--out-dim", "32"]
CPU = ["--device", "cpu", "--num-workers", "0"]
# Every test image is a copy of a training image: with 1 neighbour, the kNN must find it and its label.
ONE_NEIGHBOUR = ["--nb-knn", "1", "--headline-k", "1"]


def write_cifar10(root: Path, per_batch: int = 4, test: int = 10, seed: int = 0) -> np.ndarray:
    """CIFAR-10's python version as torchvision reads it: ``cifar-10-batches-py/`` with ``data_batch_1..5`` and
    ``test_batch`` (pickled dicts: ``data`` uint8 rows of 3072 = 3 x 32 x 32 channel-major, ``labels``,
    ``batch_label``, ``filenames``) and ``batches.meta`` (``label_names``). Returns the training images
    (N, 32, 32, 3); the test images are copies of the first ``test`` of them."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = rng.integers(0, 256, size=(5 * per_batch, 32, 32, 3), dtype=np.uint8)
    labels = [i % 10 for i in range(len(images))]

    def batch(name: str, rows: np.ndarray, row_labels: list[int], title: str) -> None:
        content = {"batch_label": title, "labels": row_labels,
                   "data": rows.transpose(0, 3, 1, 2).reshape(len(rows), 3072),
                   "filenames": [f"image_{i:05d}.png" for i in range(len(rows))]}
        with open(folder / name, "wb") as handle:
            pickle.dump(content, handle, protocol=2)

    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        batch(f"data_batch_{b + 1}", images[part], labels[part], f"training batch {b + 1} of 5")
    batch("test_batch", images[:test], labels[:test], "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072},
                    handle, protocol=2)
    return images


@pytest.fixture
def cifar10(tmp_path, monkeypatch) -> tuple[Path, np.ndarray]:
    """The fixture's files have no real md5 sums: only torchvision's md5 comparison is skipped, not the files."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
    root = tmp_path / "data"
    return root, write_cifar10(root)


def test_cifar10_pickles_train_and_evaluate_with_the_recipe(tmp_path, cifar10, capsys):
    root, images = cifar10
    train = build_dataset("cifar10", str(root), train=True)
    assert len(train) == 20 and train.classes[9] == "truck"
    image, label = train[13]
    assert np.array_equal(np.asarray(image), images[13]) and label == 3, "pixels and labels read as written"

    out = tmp_path / "pretrain"
    capsys.readouterr()
    config = pretrain_one_epoch(root, "cifar10_vit_tiny", 10, out)
    assert_run_header(capsys.readouterr().out, out)
    assert (config["img_size"], config["patch_size"], config["dataset"]) == (32, 2, "cifar10")  # the recipe's
    assert json.loads((out / "log.txt").read_text())["epoch"] == 1  # 20 images: 2 steps of 10

    results = knn_of(root, "cifar10_vit_tiny", out / "checkpoint.pth", 20, tmp_path / "knn")
    assert (results["train_images"], results["test_images"]) == (20, 10)
    assert results["weights"]["backbone"]["img_size"] == 32 and results["top1"] == 100.0


def pretrain_one_epoch(root: Path, recipe: str, batch_size: int, out: Path) -> dict:
    """``main_pretrain.py`` for one epoch of RECIPE on ROOT with the tiny model; returns the resolved config."""
    assert main_pretrain.main(["--config", recipe, "--data-path", str(root), "--output-dir", str(out),
                               "--epochs", "1", "--warmup-epochs", "0", "--batch-size", str(batch_size),
                               *TINY_MODEL, *CPU]) == 0
    return json.loads((out / "config.json").read_text())


def knn_of(root: Path, recipe: str, checkpoint: Path, batch_size: int, out: Path) -> dict:
    """``main_knn.py`` (one neighbour) of CHECKPOINT on ROOT with RECIPE's data settings; returns its results."""
    assert main_knn.main(["--config", recipe, "--data-path", str(root), "--output-dir", str(out),
                          "--pretrained-weights", str(checkpoint), "--batch-size", str(batch_size),
                          *ONE_NEIGHBOUR, *CPU]) == 0
    return json.loads((out / "results.json").read_text())


def write_imagenet_tree(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> None:
    """``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (ImageNet's layout after the usual val re-sort) of
    JPEGs of various sizes around 224 px; the val images are copies of the first train image of each class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        wnid = f"n{1440764 + c:08d}"
        for split in ("train", "val"):
            (root / split / wnid).mkdir(parents=True)
        for i in range(per_class):
            height, width = (int(v) for v in rng.integers(200, 330, size=2))
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            name = f"{wnid}_{i + 1}.JPEG"
            Image.fromarray(pixels).save(root / "train" / wnid / name, quality=90)
            if i == 0:
                (root / "val" / wnid / f"ILSVRC2012_val_{c:08d}.JPEG").write_bytes(
                    (root / "train" / wnid / name).read_bytes())


def test_imagenet_folder_tree_trains_and_evaluates_at_224_px(tmp_path, capsys):
    root = tmp_path / "imagenet"
    write_imagenet_tree(root)
    out = tmp_path / "pretrain"
    config = pretrain_one_epoch(root, "imagenet_vit_tiny", 6, out)
    assert (config["img_size"], config["patch_size"]) == (224, 16)
    assert json.loads((out / "log.txt").read_text())["epoch"] == 1  # 12 images: 2 steps of 6

    results = knn_of(root, "imagenet_vit_small", out / "checkpoint.pth", 12, tmp_path / "knn")
    assert (results["train_images"], results["test_images"]) == (12, 3)
    assert results["weights"]["backbone"]["img_size"] == 224 and results["top1"] == 100.0
