"""Datasets, augmentations, and the seeded, resumable sampling that makes resume exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_fashion_like, write_idx
from torch.utils.data import DataLoader

from patchmix.data import (
    DataError,
    FashionMNIST,
    PatchMixTransform,
    ResumableDistributedSampler,
    SeededTransformDataset,
    build_dataset,
    eval_transform,
    fixed_subset,
    num_classes,
)

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_reader_returns_rgb_images_and_labels(toy_data):
    dataset = FashionMNIST(toy_data, train=True)
    image, label = dataset[5]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 5 % 4
    assert len(dataset) == 96 and len(FashionMNIST(toy_data, train=False)) == 48
    assert num_classes(dataset) == 10  # the Fashion-MNIST class list


def test_fashion_mnist_torchvision_layout_and_plain_files(tmp_path):
    raw = make_fashion_like(tmp_path / "root" / "FashionMNIST" / "raw", train=8, test=4)
    found = FashionMNIST(tmp_path / "root")
    assert len(found) == 8 and found.root == raw
    plain = tmp_path / "plain"
    plain.mkdir()
    write_idx(plain / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    write_idx(plain / "train-labels-idx1-ubyte", np.zeros(3))
    assert len(FashionMNIST(plain)) == 3


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package():
    train = build_dataset("fashion_mnist", "", train=True)
    test = build_dataset("fashion_mnist", "", train=False)
    assert len(train) == 60000 and len(test) == 10000
    counts = np.bincount(train.targets, minlength=10)
    assert np.all(counts == 6000)


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="looked in: .*apt-get install dataset-fashion-mnist.*--download"):
        build_dataset("fashion_mnist", str(tmp_path / "nowhere"), train=True)
    with pytest.raises(DataError, match="cifar10 not found in .*cifar-10-batches-py.*--download"):
        build_dataset("cifar10", str(tmp_path), train=True)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("imagenet", str(tmp_path / "nowhere"), train=True)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        build_dataset("imagenet", str(tmp_path / "empty"), train=True)
    with pytest.raises(DataError, match="Did you mean 'cifar100'"):
        build_dataset("cifar_100", "", train=True)


def test_truncated_idx_file_is_reported(tmp_path):
    make_fashion_like(tmp_path, train=8, test=4)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    import gzip
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as handle:
        handle.write(data[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        FashionMNIST(tmp_path)


def test_image_folder_for_pretraining(tmp_path):
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    dataset = build_dataset("folder", str(tmp_path), train=True)
    assert len(dataset) == 6 and dataset[0][0].size == (20, 20)
    # a truncated file is a fatal error naming the file
    data = (tmp_path / "b" / "1.png").read_bytes()
    (tmp_path / "b" / "1.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="cannot decode image .*1.png.*corrupt or truncated"):
        dataset[4]


def test_two_views_and_local_crops_have_the_configured_sizes(toy_data):
    image, _ = FashionMNIST(toy_data)[0]
    views = PatchMixTransform(16, 0.2, local_crops_number=3, local_crop_size=8)(image)
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    assert tuple(eval_transform(24, 0.875)(image).shape) == (3, 24, 24)


def test_augmentation_depends_only_on_seed_epoch_and_index(toy_data):
    base = FashionMNIST(toy_data)
    dataset = SeededTransformDataset(base, PatchMixTransform(16, 0.2), seed=3)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = dataset[(4, 0)][0][0]
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG must be left untouched"
    assert torch.equal(first, dataset[(4, 0)][0][0])
    assert not torch.equal(first, dataset[(4, 1)][0][0])  # another epoch, another augmentation
    assert not torch.equal(first, SeededTransformDataset(base, PatchMixTransform(16, 0.2), 4)[(4, 0)][0][0])

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = ResumableDistributedSampler(dataset, 1, 0, seed=0)
        sampler.set_epoch(2)
        loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=workers)
        return [views[0] for views, _ in loader]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b), "augmentation must not depend on the number of workers"


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    data = list(range(50))
    full = ResumableDistributedSampler(data, 2, 0, seed=1)
    full.set_epoch(3)
    order = list(full)
    resumed = ResumableDistributedSampler(data, 2, 0, seed=1)
    resumed.set_epoch(3)
    resumed.set_start(10)
    assert list(resumed) == order[10:] and len(resumed) == len(order) - 10
    other = ResumableDistributedSampler(data, 2, 1, seed=1)
    other.set_epoch(3)
    assert not {i for i, _ in order} & {i for i, _ in other}
    assert all(epoch == 3 for _, epoch in order)
    full.set_epoch(4)
    assert [i for i, _ in full] != [i for i, _ in order]


def test_fixed_subset_is_deterministic_and_balanced_enough(toy_data):
    dataset = FashionMNIST(toy_data)
    a, b = fixed_subset(dataset, 40), fixed_subset(dataset, 40)
    assert a.indices == b.indices and len(a) == 40
    assert fixed_subset(dataset, 0) is dataset
