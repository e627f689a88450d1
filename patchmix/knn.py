"""Weighted k-nearest-neighbour classification of frozen features (the DINO protocol): the one kNN harness.

Every kNN number of the project (``main_knn.py``, the demo's learned-vs-random report, ``tools/reproduce.py``)
goes through :func:`knn_splits` (the data and its one transform rule), :func:`extract_features` and
:func:`weighted_knn`, so the same checkpoint and split give the same number wherever it is measured.

The classifier has no learnable parameter: features are L2-normalised, the ``k`` most cosine-similar training
features vote for their label with weight ``exp(similarity / T)`` (T = 0.07), and the class with the largest
summed weight wins. Similarities are computed for a chunk of test features at a time, so a bank of 1.28M
ImageNet features fits in memory (optionally stored in fp16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from patchmix.data import build_splits, eval_transform, num_classes, standard_crop_pct
from patchmix.distributed import get_rank, get_world_size, is_distributed
from patchmix.runlog import progress_bar

__all__ = ["weighted_knn", "extract_features", "IndexedDataset", "KnnSplits", "knn_splits"]


@torch.no_grad()
def weighted_knn(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, ks: Sequence[int] = (10, 20, 100, 200),
                 temperature: float = 0.07, chunk_size: int = 256) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (in %) of weighted kNN for every ``k`` in ``ks``.

    Args:
        train_features: ``(N, D)`` bank (any float dtype; normalised here, kept in its dtype).
        train_labels: ``(N,)`` integer labels.
        test_features / test_labels: the images to classify, same layout.
        num_classes: number of classes (the vote has one bin per class).
        ks: numbers of neighbours; all are answered from one top-``max(ks)`` search.
        temperature: ``T`` of the vote weights ``exp(s / T)``.
        chunk_size: test features per similarity matrix (memory ~ ``chunk_size x N``).
    """
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("features and labels must have the same length.")
    ks = sorted(set(int(k) for k in ks))
    max_k = min(ks[-1], len(train_features))
    bank = F.normalize(train_features, dim=1)
    train_labels = train_labels.to(bank.device)
    correct = {k: torch.zeros(2, dtype=torch.long) for k in ks}
    for start in range(0, len(test_features), chunk_size):
        queries = F.normalize(test_features[start:start + chunk_size].to(bank.device, bank.dtype), dim=1)
        labels = test_labels[start:start + chunk_size].to(bank.device)
        similarity, neighbours = (queries @ bank.t()).float().topk(max_k, dim=1)
        votes = F.one_hot(train_labels[neighbours], num_classes).float() * (similarity / temperature).exp()[..., None]
        cumulative = votes.cumsum(dim=1)  # (chunk, k, classes): the vote of the first k neighbours
        for k in ks:
            scores = cumulative[:, min(k, max_k) - 1]
            top = scores.topk(min(5, num_classes), dim=1).indices
            hits = top == labels[:, None]
            correct[k] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).cpu()
    total = len(test_features)
    return {k: {"top1": 100.0 * c[0].item() / total, "top5": 100.0 * c[1].item() / total}
            for k, c in correct.items()}


@dataclass
class KnnSplits:
    """The bank (train split) and the queries (test split) of a kNN evaluation."""

    train: Dataset
    test: Dataset
    num_classes: int


def knn_splits(dataset: str, data_path: str, img_size: int, crop_pct: float = 0.0, train_subset: int = 0,
               test_subset: int = 0, download: bool = False) -> KnnSplits:
    """Both splits through the evaluation transform: resize to ``img_size / crop_pct``, centre crop, normalise.

    ``crop_pct`` 0 takes the dataset's standard (:func:`patchmix.data.standard_crop_pct`); subsets are the
    fixed ones of :func:`patchmix.data.fixed_subset`.
    """
    transform = eval_transform(img_size, crop_pct or standard_crop_pct(dataset))
    train, test = build_splits(dataset, data_path, transform, transform, train_subset, test_subset, download)
    return KnnSplits(train, test, num_classes(train))


class IndexedDataset(Dataset):
    """Return ``(image, label, index)`` so features gathered from many processes can be put in order."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        image, label = self.dataset[index]
        return image, label, index


@torch.no_grad()
def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int,
                     device: torch.device, num_workers: int = 0, amp_dtype: torch.dtype | None = None,
                     feature_dtype: torch.dtype = torch.float32, progress: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every item of ``dataset``, in dataset order, on every process.

    Each process encodes its share of the dataset; the shares are all-gathered and put back in order (the
    padding a distributed sampler adds is dropped). Features are returned on ``device`` in ``feature_dtype``.
    """
    indexed = IndexedDataset(dataset)
    sampler = (DistributedSampler(indexed, shuffle=False, drop_last=False) if is_distributed() else None)
    loader = DataLoader(indexed, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", shuffle=False)
    features: torch.Tensor | None = None
    labels = torch.zeros(len(dataset), dtype=torch.long, device=device)
    iterator = loader
    if progress and get_rank() == 0:
        iterator = progress_bar(iterable=loader, desc="features", leave=False)
    for images, targets, indices in iterator:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            output = encode(images).float()
        targets, indices = targets.to(device), indices.to(device)
        if is_distributed():
            output, targets, indices = _gather_rows(output), _gather_rows(targets), _gather_rows(indices)
        if features is None:
            features = torch.zeros(len(dataset), output.shape[1], dtype=feature_dtype, device=device)
        features[indices] = output.to(feature_dtype)
        labels[indices] = targets
    assert features is not None, "empty dataset"
    return features, labels


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor whose first dimension may differ between processes (last batch)."""
    world = get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(s.item())] for g, s in zip(gathered, sizes)])
