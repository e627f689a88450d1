"""Datasets, the asymmetric PatchMix augmentations, evaluation transforms and a resumable sampler.

Datasets: CIFAR-10/100 (torchvision), ImageNet or any ImageFolder tree, and Fashion-MNIST (read straight from
the four IDX files, e.g. from the Debian/Ubuntu package ``dataset-fashion-mnist``, or downloaded by
torchvision). Every image is returned as an RGB PIL image, so all datasets share one pipeline and one model.

Reproducibility: the augmentation of an image is a pure function of ``(seed, epoch, index)`` (see
:class:`SeededTransformDataset`), and :class:`ResumableDistributedSampler` can start an epoch at any batch. A run
interrupted mid-epoch therefore resumes with exactly the batches and augmentations it would have seen.
"""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset, DistributedSampler, Subset
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

from patchmix.config import suggest
from patchmix.distributed import barrier, is_main_process

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DATASETS", "DataError", "build_dataset", "num_classes",
           "PatchMixTransform", "eval_transform", "SeededTransformDataset", "ResumableDistributedSampler",
           "FashionMNIST", "fixed_subset", "FASHION_MNIST_DIRS", "resumable_loader",
           "standard_crop_pct", "build_splits", "seed_everything", "sample_seed"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASETS = ("cifar10", "cifar100", "imagenet", "folder", "fashion_mnist")

# Where Fashion-MNIST is looked for when no data_path is given: torchvision's layout under ./data, and the
# install location of the Debian/Ubuntu package ``dataset-fashion-mnist``.
FASHION_MNIST_DIRS = ("data/FashionMNIST/raw", "data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(RuntimeError):
    """Data is missing, empty or unreadable; the message says where we looked and how to get it."""


# --------------------------------------------------------------------------------------------------------------
# Augmentations


class GaussianBlur:
    """PIL Gaussian blur with a radius drawn from U[sigma_min, sigma_max] (as in MoCo v3, DINO and PatchMix).

    Draws from torch's RNG so that :class:`SeededTransformDataset` controls it.
    """

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 2.0) -> None:
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, image: Image.Image) -> Image.Image:
        radius = self.sigma_min + (self.sigma_max - self.sigma_min) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class Solarize:
    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.solarize(image, threshold=128)


def _view(size: int, scale: tuple[float, float], blur_prob: float, solarize_prob: float,
          color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1)) -> Callable:
    ops: list = [
        transforms.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC),
        transforms.RandomApply([transforms.ColorJitter(*color_jitter)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur_prob > 0:
        ops.append(transforms.RandomApply([GaussianBlur()], p=blur_prob))
    if solarize_prob > 0:
        ops.append(transforms.RandomApply([Solarize()], p=solarize_prob))
    ops += [transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(ops)


class PatchMixTransform:
    """The two asymmetric global views of the official code (+ optional local crops).

    View 1 is always blurred (p=1.0) and never solarised, view 2 rarely blurred (0.1) and sometimes solarised
    (0.2); local crops are blurred with p=0.5. All views: RandomResizedCrop (bicubic), colour jitter
    (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, horizontal flip, ImageNet normalisation.
    """

    def __init__(self, img_size: int, crop_min: float, blur_probs: Sequence[float] = (1.0, 0.1, 0.5),
                 solarize_probs: Sequence[float] = (0.0, 0.2), local_crops_number: int = 0,
                 local_crop_size: int = 96, local_crop_scale: Sequence[float] = (0.05, 0.35),
                 color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1)) -> None:
        if (len(blur_probs) != 3 or len(solarize_probs) != 2 or len(local_crop_scale) != 2
                or len(color_jitter) != 4):
            raise ValueError("blur_probs takes 3 values (view 1, view 2, local crops), solarize_probs 2, "
                             "local_crop_scale 2 and color_jitter 4 (brightness, contrast, saturation, hue).")
        self.view1 = _view(img_size, (crop_min, 1.0), blur_probs[0], solarize_probs[0], color_jitter)
        self.view2 = _view(img_size, (crop_min, 1.0), blur_probs[1], solarize_probs[1], color_jitter)
        self.local_crops_number = local_crops_number
        self.local = _view(local_crop_size, tuple(local_crop_scale), blur_probs[2], 0.0, color_jitter)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        views = [self.view1(image), self.view2(image)]
        views += [self.local(image) for _ in range(self.local_crops_number)]
        return views


def eval_transform(img_size: int, crop_pct: float = 1.0) -> Callable:
    """Resize to ``img_size / crop_pct`` (bicubic), centre-crop ``img_size``, normalise.

    ``crop_pct`` 0.875 is the ImageNet 256/224 protocol; 1.0 leaves small images as they are (the official
    CIFAR evaluation uses 32/36).
    """
    ops: list = []
    resize = int(round(img_size / crop_pct))
    ops += [transforms.Resize(resize, interpolation=InterpolationMode.BICUBIC), transforms.CenterCrop(img_size)]
    ops += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(ops)


# --------------------------------------------------------------------------------------------------------------
# Datasets


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (wrong header); the file may be corrupt.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(data) - offset} bytes of data, {expected} "
                        f"expected for shape {shape}. Reinstall or re-download it.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files (gzipped or not), as RGB PIL images with int labels.

    ``root`` may hold the files directly or in torchvision's ``FashionMNIST/raw`` layout. With no root, the
    places in ``FASHION_MNIST_DIRS`` are tried.
    """

    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")

    def __init__(self, root: str | os.PathLike | None, train: bool = True, download: bool = False,
                 transform: Callable | None = None) -> None:
        self.transform = transform
        image_stem, label_stem = _FASHION_FILES[train]
        candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [Path(d) for d in
                                                                                      FASHION_MNIST_DIRS]
        if download and not any(_find_idx(d, image_stem) for d in candidates):
            target = Path(root) if root else Path("data")
            try:
                datasets.FashionMNIST(str(target), train=train, download=True)
            except Exception as error:  # network errors come in many types
                raise DataError(f"downloading Fashion-MNIST into {target} failed ({error}). Without internet, "
                                f"install the Debian/Ubuntu package: apt-get install dataset-fashion-mnist") \
                    from error
            candidates = [target / "FashionMNIST" / "raw"] + candidates
        for directory in candidates:
            images_path, labels_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
            if images_path and labels_path:
                self.images = _read_idx(images_path)
                self.targets = _read_idx(labels_path).astype(np.int64)
                self.root = directory
                if len(self.images) != len(self.targets):
                    raise DataError(f"{images_path} and {labels_path} hold different numbers of items.")
                return
        looked = ", ".join(str(d) for d in candidates)
        raise DataError(f"Fashion-MNIST files ({image_stem}[.gz], {label_stem}[.gz]) not found; looked in: "
                        f"{looked}. Get them with `apt-get install dataset-fashion-mnist` (offline package), or "
                        f"pass --download to fetch them with torchvision, or point --data-path at them.")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple:
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def _cifar(name: str, root: str, train: bool, download: bool, transform: Callable | None) -> Dataset:
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = Path(root) / cls.base_folder
    try:
        return cls(root, train=train, download=download, transform=transform)
    except RuntimeError as error:
        how = ("pass --download (needs internet)" if not download else
               "check the network, or download and extract it by hand")
        raise DataError(f"{name} not found in {folder} ({error}). To get it, {how}; or point --data-path at "
                        f"the directory containing {cls.base_folder}/.") from error


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB; a corrupt or truncated file is a fatal error that names the file.

    Skipping bad files silently would change the dataset under a running experiment, so we stop instead.
    """
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot decode image {path} ({error}): the file is corrupt or truncated. Delete or "
                        f"replace it, then re-run the same command (training resumes).") from error


def _image_folder(root: Path, transform: Callable | None, name: str) -> Dataset:
    if not root.is_dir():
        raise DataError(f"{name}: directory {root} does not exist. Point --data-path at a folder with one "
                        f"sub-folder per class (ImageNet: DATA_PATH/train/<wnid>/*.JPEG and DATA_PATH/val/...). "
                        f"Unlabelled images: put them in a single sub-folder.")
    try:
        return datasets.ImageFolder(str(root), transform=transform, loader=load_rgb)
    except FileNotFoundError as error:
        raise DataError(f"{name}: no images found under {root} ({error}). It needs one sub-folder per class "
                        f"holding .jpg/.png/... files; unlabelled images can all go in one sub-folder.") from error


def build_dataset(name: str, data_path: str, train: bool, transform: Callable | None = None,
                  download: bool = False) -> Dataset:
    """The ``train`` or test split of a dataset; items are ``(transform(RGB PIL image), label)``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.{suggest(name, DATASETS)}")
    if name in ("cifar10", "cifar100"):
        dataset = _cifar(name, data_path or "data", train, download, transform)
    elif name == "fashion_mnist":
        dataset = FashionMNIST(data_path or None, train=train, download=download, transform=transform)
    else:
        if not data_path:
            raise DataError(f"dataset {name!r} needs --data-path (a folder with train/ and val/ sub-folders).")
        root = Path(data_path)
        split = root / ("train" if train else "val")
        if name == "folder" and train and not split.is_dir():
            split = root  # a plain folder of class folders is enough for pretraining
        dataset = _image_folder(split, transform, name)
    if len(dataset) == 0:
        raise DataError(f"dataset {name!r} at {data_path or 'its default location'} is empty.")
    return dataset


def num_classes(dataset: Dataset) -> int:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if hasattr(base, "classes"):
        return len(base.classes)
    return int(max(base.targets)) + 1


def dataset_targets(dataset: Dataset) -> list[int]:
    """Labels of every item, without decoding the images."""
    if isinstance(dataset, Subset):
        targets = dataset_targets(dataset.dataset)
        return [targets[i] for i in dataset.indices]
    return [int(t) for t in dataset.targets]


def fixed_subset(dataset: Dataset, size: int, seed: int = 0) -> Dataset:
    """A random subset of ``size`` items that depends only on ``seed`` (0 = the whole dataset)."""
    if size <= 0 or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values.tolist()
    return Subset(dataset, indices)


# --------------------------------------------------------------------------------------------------------------
# Reproducible, resumable sampling


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one image of one epoch (SplitMix64 of the three numbers)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2 ** 64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) % 2 ** 64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) % 2 ** 64
    return (value ^ (value >> 31)) % 2 ** 63


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random`` alike: torchvision draws from torch, timm's
    RandAugment, RandomErasing and Mixup from ``random`` and numpy."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


class SeededTransformDataset(Dataset):
    """Apply ``transform`` with torch's RNG seeded from ``(seed, epoch, index)`` for every item.

    Indices come from :class:`ResumableDistributedSampler` as ``(index, epoch)`` pairs, so the augmentation
    does not depend on the number of data-loading workers, on which worker loads an item, or on where a
    resumed run starts. torch, numpy and Python's ``random`` are all seeded (torchvision draws from torch,
    timm's RandAugment and RandomErasing from ``random`` and numpy); in the training process their states are
    restored afterwards.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        index, epoch = key
        image, label = self.dataset[index]
        seed = sample_seed(self.seed, epoch, index)
        if torch.utils.data.get_worker_info() is not None:  # a loader worker: its RNG serves nobody else
            seed_everything(seed)
            return self.transform(image), label
        # In the training process: torch.manual_seed also reseeds CUDA, so every state is put back.
        states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        seed_everything(seed)
        try:
            return self.transform(image), label
        finally:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)


class ResumableDistributedSampler(DistributedSampler):
    """torch's ``DistributedSampler`` that yields ``(index, epoch)`` and can skip the first batches of an epoch.

    Works without a process group (pass ``num_replicas=1, rank=0``).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start_index = 0

    def set_start(self, start_index: int) -> None:
        """Skip this many samples (of this process) at the start of the current epoch only."""
        self.start_index = start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start_index:]
        return iter([(index, self.epoch) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def resumable_loader(dataset: Dataset, transform: Callable, seed: int, batch_per_process: int, rank: int,
                     world_size: int, num_workers: int, pin_memory: bool = False
                     ) -> tuple[torch.utils.data.DataLoader, ResumableDistributedSampler]:
    """The training loader of every script: shuffled, distributed, last partial batch dropped, and resumable at
    any batch with the same augmentations (each image's depends only on ``(seed, epoch, index)``)."""
    seeded = SeededTransformDataset(dataset, transform, seed)
    sampler = ResumableDistributedSampler(seeded, world_size, rank, seed=seed)
    loader = torch.utils.data.DataLoader(
        seeded, batch_size=batch_per_process, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        drop_last=True, persistent_workers=num_workers > 0,
        generator=torch.Generator())  # own generator: creating an iterator must not consume the global RNG
    return loader, sampler


def standard_crop_pct(dataset: str) -> float:
    """The evaluation crop of a dataset: ImageNet's 0.875 (resize 256, centre crop 224); 1.0 (the whole image)
    for everything else. Every evaluation (kNN, probe, fine-tuning, the demo's report) uses this rule."""
    return 0.875 if dataset == "imagenet" else 1.0


def build_splits(dataset: str, data_path: str, train_transform: Callable | None, test_transform: Callable | None,
                 train_subset: int = 0, test_subset: int = 0, download: bool = False) -> tuple[Dataset, Dataset]:
    """Train and test splits with their transforms, cut to fixed subsets (the main process downloads first)."""
    if download and is_main_process():
        build_dataset(dataset, data_path, train=True, download=True)
        build_dataset(dataset, data_path, train=False, download=True)
    barrier()
    train = fixed_subset(build_dataset(dataset, data_path, True, train_transform), train_subset)
    test = fixed_subset(build_dataset(dataset, data_path, False, test_transform), test_subset)
    return train, test
