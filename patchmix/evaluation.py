"""What the three evaluation scripts share: weights -> model, data, output directory, exact test accuracy, kNN.

All three evaluate the CLS token after the final LayerNorm of a timm ViT (``forward_head(..., pre_logits=True)``),
built for the weights by :func:`patchmix.weights.load_weights` (momentum encoder of a pretraining checkpoint by
default). Test accuracy is computed over disjoint shards of the test set, one per process, and summed, so it is
exact whatever the number of processes (no padding duplicates).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from patchmix import checkpoint
from patchmix.checkpoint import CheckpointError, save_checkpoint
from patchmix.config import ConfigError, EvalConfig, KnnConfig
from patchmix.data import DataError, build_dataset, eval_transform, fixed_subset, num_classes
from patchmix.distributed import DistInfo, barrier, cleanup, get_rank, get_world_size, is_distributed
from patchmix.knn import extract_features, weighted_knn
from patchmix.models import cls_features
from patchmix.weights import LoadedWeights, WeightsError, build_model, load_weights, resolve_weights

__all__ = ["USER_ERRORS", "run_script", "RUN_ONLY_KEYS", "load_pretrained", "input_size", "build_splits",
           "ShardSampler", "test_loader", "evaluate", "prepare_run_dir", "seed_everything", "write_results",
           "cls_features", "run_knn", "per_process_batch"]

# Problems the user fixes (missing data or weights, bad settings): reported as one line, not a traceback.
USER_ERRORS = (ConfigError, WeightsError, DataError, CheckpointError)


def run_script(body: Callable[[], Any]) -> int:
    """Run a script's body; print a user error as ``error: ...`` on stderr and return 2 instead of a traceback."""
    try:
        body()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


# Settings that may change between a run and its resumption without changing what is trained or measured.
RUN_ONLY_KEYS = ("output_dir", "resume", "allow_config_change", "device", "num_workers", "log_freq",
                 "dist_timeout_minutes", "data_path", "download", "weights_dir", "eval_only", "allow_pickle",
                 "stop_after_epochs")


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


def build_splits(cfg: EvalConfig, train_transform: Callable, test_transform: Callable,
                 env: DistInfo) -> tuple[Dataset, Dataset]:
    """Train and test splits with their transforms, cut to the configured fixed subsets."""
    if env.is_main and cfg.download:
        build_dataset(cfg.dataset, cfg.data_path, train=True, download=True)
        build_dataset(cfg.dataset, cfg.data_path, train=False, download=True)
    barrier()
    train = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, True, train_transform), cfg.train_subset)
    test = fixed_subset(build_dataset(cfg.dataset, cfg.data_path, False, test_transform), cfg.test_subset)
    return train, test


def per_process_batch(cfg: EvalConfig, world_size: int) -> int:
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}.")
    return cfg.batch_size // world_size


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
    from timm.utils import accuracy
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


def prepare_run_dir(cfg: Any, is_main: bool, resumable: bool = True) -> tuple[Path, Path | None]:
    """Output directory, checkpoint to resume from, saved config (see :func:`patchmix.checkpoint.prepare_run_dir`)."""
    return checkpoint.prepare_run_dir(cfg, is_main, RUN_ONLY_KEYS, resumable)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy (timm's Mixup) and random (some augmentations) alike."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def write_results(output_dir: Path, results: dict[str, Any]) -> Path:
    path = output_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# kNN


def _feature_file(path: str) -> Path:
    p = Path(path)
    return p / "features.pth" if p.is_dir() or path.endswith("/") else p


def run_knn(cfg: KnnConfig, env: DistInfo) -> dict[str, Any]:
    """Extract (or load) CLS features of the train and test splits, classify the test split by weighted kNN,
    write ``results.json``; return the results."""
    output_dir, _ = prepare_run_dir(cfg, env.is_main, resumable=False)
    ks = sorted(set(cfg.nb_knn) | {cfg.headline_k})
    if any(k < 1 for k in ks):
        raise ConfigError(f"every k must be >= 1, got {ks}.")
    feature_dtype = torch.float16 if cfg.fp16_features else torch.float32
    weights_info: dict[str, Any]
    if cfg.load_features:
        path = _feature_file(cfg.load_features)
        if not path.is_file():
            raise ConfigError(f"--load-features {path}: no such file (write it first with --dump-features).")
        saved = torch.load(path, map_location=env.device, weights_only=True)
        train_features, train_labels = saved["train_features"].to(feature_dtype), saved["train_labels"]
        test_features, test_labels = saved["test_features"].to(feature_dtype), saved["test_labels"]
        classes, weights_info = int(saved["num_classes"]), saved.get("weights", {})
        if env.is_main:
            print(f"loaded features from {path} ({len(train_features)} bank / {len(test_features)} test)")
    else:
        from patchmix.engine import amp_dtype
        loaded = load_pretrained(cfg, env)
        model = build_model(loaded).to(env.device).eval()
        size = input_size(cfg, loaded)
        transform = eval_transform(size, cfg.crop_pct)
        train, test = build_splits(cfg, transform, transform, env)
        classes = num_classes(train)
        batch = per_process_batch(cfg, env.world_size)
        dtype = amp_dtype(cfg.amp, env.device)
        encode = cls_features(model)
        train_features, train_labels = extract_features(encode, train, batch, env.device, cfg.num_workers, dtype,
                                                        feature_dtype, progress=True)
        test_features, test_labels = extract_features(encode, test, batch, env.device, cfg.num_workers, dtype,
                                                      feature_dtype, progress=True)
        weights_info = loaded.summary()
        if cfg.dump_features and env.is_main:
            path = _feature_file(cfg.dump_features)
            save_checkpoint({"train_features": train_features.cpu(), "train_labels": train_labels.cpu(),
                             "test_features": test_features.cpu(), "test_labels": test_labels.cpu(),
                             "num_classes": classes, "weights": weights_info, "img_size": size,
                             "dataset": cfg.dataset}, path)
            print(f"saved features to {path}")
    results: dict[str, Any] = {}
    if env.is_main:
        accuracy = weighted_knn(train_features, train_labels, test_features, test_labels, classes, ks,
                                cfg.temperature, cfg.chunk_size)
        head = accuracy[cfg.headline_k]
        results = {"protocol": "weighted kNN", "dataset": cfg.dataset, "headline_k": cfg.headline_k,
                   "top1": head["top1"], "top5": head["top5"], "temperature": cfg.temperature,
                   "train_images": len(train_features), "test_images": len(test_features),
                   "feature_dtype": str(feature_dtype).replace("torch.", ""),
                   "knn": {str(k): v for k, v in accuracy.items()}, "weights": weights_info,
                   "preset": cfg.preset}
        write_results(output_dir, results)
        source = weights_info.get("source", "?") if isinstance(weights_info, dict) else "?"
        encoder = weights_info.get("encoder", "") if isinstance(weights_info, dict) else ""
        print(f"\nWeighted kNN (T={cfg.temperature}) on {cfg.dataset}: {len(train_features)} bank / "
              f"{len(test_features)} test images; features: CLS token of "
              f"{encoder + ' of ' if encoder else ''}{source}")
        print("     k   top-1   top-5")
        for k in ks:
            mark = "   <- headline" if k == cfg.headline_k else ""
            print(f"  {k:4d}  {accuracy[k]['top1']:6.2f}  {accuracy[k]['top5']:6.2f}{mark}")
        print(f"results: {output_dir / 'results.json'}")
    barrier()
    return results
