"""One kNN harness: the demo's report and main_knn.py give the same number for the same checkpoint and split."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_PRETRAIN

import main_knn
import main_pretrain
from patchmix.data import build_dataset


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, toy_data):
    """The toy set as an ImageFolder tree (train/<class>/*.png, val/<class>/*.png) of 28-px images: the layout
    on which the report and main_knn.py once disagreed (different centre crops)."""
    root = tmp_path_factory.mktemp("folder")
    for split, train in (("train", True), ("val", False)):
        dataset = build_dataset("fashion_mnist", str(toy_data), train)
        for index in range(len(dataset)):
            image, label = dataset[index]
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
            image.save(root / split / f"class{label}" / f"{index:04d}.png")
    return root


@pytest.mark.parametrize("dataset", ["folder", "fashion_mnist"])
def test_report_and_main_knn_agree(tmp_path, toy_data, image_folder, dataset):
    data = str(image_folder if dataset == "folder" else toy_data)
    out = tmp_path / "pretrain"
    assert main_pretrain.main(TINY_PRETRAIN + ["--dataset", dataset, "--data-path", data, "--output-dir", str(out),
                                               "--epochs", "1", "--knn-eval", "--knn-test-subset", "40"]) == 0
    report = json.loads((out / "knn.json").read_text())
    assert main_knn.main(["--config", "demo", "--dataset", dataset, "--data-path", data, "--pretrained-weights",
                          str(out / "checkpoint.pth"), "--output-dir", str(tmp_path / "knn"), "--test-subset", "40",
                          "--device", "cpu", "--num-workers", "0"]) == 0
    results = json.loads((tmp_path / "knn" / "results.json").read_text())
    assert (results["train_images"], results["test_images"]) == (report["train_images"], report["test_images"])
    assert results["test_images"] == 40
    assert results["knn"]["20"]["top1"] == report["learned_top1"]
