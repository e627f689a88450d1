"""What the three evaluation protocols share: the weights to evaluate, the input size, exact test accuracy.

All three evaluate the CLS token after the final LayerNorm of a timm ViT (``forward_head(..., pre_logits=True)``),
built for the weights by :func:`patchmix.weights.load_weights` (the momentum encoder of a pretraining checkpoint
by default). Test accuracy is computed over disjoint shards of the test set, one per process, and summed, so it
is exact whatever the number of processes (no padding duplicates).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from timm.utils import accuracy
from torch.utils.data import DataLoader, Dataset, Sampler

from patchmix.config import ConfigError, EvalConfig
from patchmix.distributed import DistInfo, barrier, get_rank, get_world_size, is_distributed
from patchmix.weights import LoadedWeights, load_weights, resolve_weights

__all__ = ["load_pretrained", "input_size", "ShardSampler", "test_loader", "evaluate"]


def load_pretrained(cfg: EvalConfig, env: DistInfo, quiet: bool = False) -> LoadedWeights:
    """Load ``cfg.pretrained_weights`` on every process (rank 0 downloads first, the others then hit the cache)."""
    resolved = None
    if env.is_main:
        resolved = resolve_weights(cfg.pretrained_weights, cfg.weights_dir or None)
    barrier()
    if resolved is None:
        resolved = resolve_weights(cfg.pretrained_weights, cfg.weights_dir or None)
    loaded = load_weights(cfg.pretrained_weights, cfg.encoder, cfg.checkpoint_key, cfg.allow_pickle, cfg.arch,
                          cfg.patch_size, cfg.num_heads, resolved=resolved)
    if env.is_main and not quiet:
        print(loaded.describe())
    return loaded


def input_size(cfg: EvalConfig, loaded: LoadedWeights | None) -> int:
    """The input resolution: ``--img-size``, else the one the weights were trained at."""
    if cfg.img_size:
        return cfg.img_size
    if loaded is None:
        raise ConfigError("set --img-size (it cannot be read from weights here).")
    return int(loaded.backbone["img_size"])


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world, ...`` in order: disjoint shards that together cover the dataset once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def test_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), get_rank(),
                                                                          get_world_size()),
                      num_workers=num_workers, pin_memory=device.type == "cuda")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device,
             amp: torch.dtype | None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the whole test set (all processes)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images)
        logits = logits.float()
        top1, top5 = accuracy(logits, targets, topk=(1, min(5, logits.shape[1])))
        n = images.shape[0]
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        totals += torch.stack([top1 * n / 100, top5 * n / 100, loss, torch.tensor(float(n), device=device)]
                              ).double()
    if is_distributed():
        dist.all_reduce(totals)
    model.train(was_training)
    count = max(totals[3].item(), 1.0)
    return {"top1": 100.0 * round(totals[0].item()) / count, "top5": 100.0 * round(totals[1].item()) / count,
            "loss": totals[2].item() / count, "images": int(totals[3].item())}
