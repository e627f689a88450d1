"""python -m patchmix.features: the rows are main_knn.py's features of the same images; outputs; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from evalkit import save_ours, tiny_pretraining_model
from safetensors import safe_open

import main_knn
from patchmix import features
from patchmix.data import build_dataset


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory, toy_data):
    """24 + 8 toy images as an ImageFolder tree (train/<class>/*.png, val/<class>/*.png), 28 px: the features
    are taken at the weights' 16 px, so the resize of the evaluation transform is exercised."""
    root = tmp_path_factory.mktemp("tree")
    for split, train, count in (("train", True, 24), ("val", False, 8)):
        dataset = build_dataset("fashion_mnist", str(toy_data), train)
        for index in range(count):
            image, label = dataset[index]
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
            image.save(root / split / f"class{label}" / f"{index:04d}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_ours(tiny_pretraining_model(), tmp_path_factory.mktemp("weights") / "ours.pth")


def test_rows_are_main_knn_features_of_the_same_images(tmp_path, image_tree, weights):
    dump = tmp_path / "knn" / "features.pth"
    assert main_knn.main(["--config", "demo", "--dataset", "folder", "--data-path", str(image_tree),
                          "--pretrained-weights", str(weights), "--output-dir", str(tmp_path / "knn"), "--device",
                          "cpu", "--num-workers", "0", "--batch-size", "7", "--dump-features", str(dump)]) == 0
    knn = torch.load(dump, weights_only=True)
    ours = tmp_path / "ours.safetensors"
    assert features.main(["--weights", str(weights), "--images", str(image_tree / "train"), "--out", str(ours),
                          "--device", "cpu", "--num-workers", "0", "--batch-size", "5"]) == 0
    with safe_open(str(ours), "pt") as handle:
        rows, files = handle.get_tensor("features"), json.loads(handle.metadata()["files"])
    folder = build_dataset("folder", str(image_tree), train=True)  # main_knn.py's bank, in its order
    order = [files.index(Path(path).relative_to(image_tree / "train").as_posix()) for path, _ in folder.samples]
    assert len(files) == len(knn["train_features"]) == 24
    assert torch.equal(rows[order], knn["train_features"])


def test_patch_tokens_and_the_npy_layout(tmp_path, image_tree, weights):
    out = tmp_path / "feats.npy"
    assert features.main(["--weights", str(weights), "--images", str(image_tree), "--out", str(out), "--device",
                          "cpu", "--num-workers", "0", "--patch-tokens"]) == 0
    cls, tokens = np.load(out), np.load(tmp_path / "feats.patch_tokens.npy")
    files = (tmp_path / "feats.files.txt").read_text().splitlines()
    assert len(files) == 32 and files == sorted(files) and files[0].startswith("train/class")  # recursive
    assert cls.shape == (32, 32) and tokens.shape == (32, 16, 32)  # 16-px images, 4-px patches, 32-d
    from patchmix.weights import build_model, load_weights
    model = build_model(load_weights(str(weights))).eval()
    transform = features.eval_transform(16, 1.0)
    image = transform(features.load_rgb(str(image_tree / files[3]))).unsqueeze(0)
    with torch.no_grad():
        expected = model.forward_features(image)
    assert np.allclose(tokens[3], expected[0, 1:].numpy(), atol=1e-5)  # patch tokens after the final norm
    assert np.allclose(cls[3], expected[0, 0].numpy(), atol=1e-5)  # CLS after the final norm is the feature


def test_bad_input_is_one_error_line(tmp_path, image_tree, weights, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    cases = {
        ("--images", str(empty), "--out", str(tmp_path / "f.npy")): "error: no images under",
        ("--images", str(image_tree), "--out", str(tmp_path / "f.pt")): "error: --out",
        ("--images", str(tmp_path / "missing"), "--out", str(tmp_path / "f.npy")): "error: --images",
    }
    for args, start in cases.items():
        assert features.main(["--weights", str(weights), *args, "--device", "cpu"]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(start), line
    assert features.main(["--weights", "cifar10-vit-smal-pretrain", "--images", str(image_tree), "--out",
                          str(tmp_path / "f.npy"), "--device", "cpu"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "cifar10-vit-small-pretrain" in line  # the closest released name
    (empty / "broken.png").write_bytes(b"\x89PNG not really")
    assert features.main(["--weights", str(weights), "--images", str(empty), "--out", str(tmp_path / "f.npy"),
                          "--device", "cpu", "--num-workers", "0"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: cannot decode image") and "broken.png" in line
