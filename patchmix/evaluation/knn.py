"""The weighted-kNN protocol of ``main_knn.py``: config, feature dump/load, results.

The data, the features and the classifier are the project's one kNN harness (:mod:`patchmix.knn`), the same
the pretraining demo's report and ``tools/reproduce.py`` use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from patchmix.checkpoint import save_checkpoint
from patchmix.config import RUN, ConfigError, EvalConfig, configclass, option
from patchmix.distributed import DistInfo, barrier, batch_per_process
from patchmix.engine import amp_dtype
from patchmix.evaluation.common import input_size, load_pretrained
from patchmix.knn import extract_features, knn_splits, weighted_knn
from patchmix.models import cls_features
from patchmix.rundir import prepare_run_dir, run_header, write_results
from patchmix.runlog import publish_results
from patchmix.weights import build_model

__all__ = ["KnnConfig", "run_knn"]

KNN = "kNN"


@configclass
class KnnConfig(EvalConfig):
    """Weighted k-nearest-neighbour classification of frozen CLS features (DINO protocol)."""

    output_dir: str = "output/knn"
    amp: str = RUN("none", "autocast of the feature extraction: none = float32, as the official kNN (a bf16 "
                   "feature can move a neighbour's rank); auto = bf16 on GPUs that support it, or bf16 / fp16",
                   choices=("auto", "bf16", "fp16", "none"))
    nb_knn: tuple[int, ...] = option((10, 20, 100, 200), "numbers of neighbours to report", group=KNN, at_least=1)
    headline_k: int = option(20, "the k reported as the headline number (DINO convention 20)", group=KNN,
                             at_least=1)
    temperature: float = option(0.07, "T of the vote weights exp(similarity / T)", group=KNN, above=0)
    chunk_size: int = option(256, "test images per similarity matrix (memory ~ CHUNK_SIZE x bank size)",
                             group=KNN, at_least=1, run_only=True)
    fp16_features: bool = option(False, "keep the feature bank in float16 (half the memory)", group=KNN)
    dump_features: str = option("", "save the extracted features and labels to this file", group=KNN,
                                run_only=True)
    load_features: str = option("", "skip the model: classify the features saved by --dump-features in this "
                                "file", group=KNN)


def _feature_file(path: str) -> Path:
    p = Path(path)
    return p / "features.pth" if p.is_dir() or path.endswith("/") else p


def _load_features(cfg: KnnConfig, env: DistInfo, dtype: torch.dtype) -> tuple[dict[str, Any], int, dict, str]:
    path = _feature_file(cfg.load_features)
    if not path.is_file():
        raise ConfigError(f"--load-features {path}: no such file (write it first with --dump-features).")
    saved = torch.load(path, map_location=env.device, weights_only=True)
    features = {k: saved[k].to(dtype) if k.endswith("features") else saved[k]
                for k in ("train_features", "train_labels", "test_features", "test_labels")}
    if env.is_main:
        print(f"loaded features from {path} ({len(features['train_features'])} bank / "
              f"{len(features['test_features'])} test)")
    return features, int(saved["num_classes"]), saved.get("weights", {}), str(saved.get("autocast", "unknown"))


def run_knn(cfg: KnnConfig, env: DistInfo) -> dict[str, Any]:
    """Extract (or load) CLS features of the train and test splits, classify the test split by weighted kNN,
    write ``results.json``; return the results."""
    output_dir, _ = prepare_run_dir(cfg, env.is_main, resumable=False)
    if env.is_main:
        print(run_header(cfg, env))
    ks = sorted(set(cfg.nb_knn) | {cfg.headline_k})
    feature_dtype = torch.float16 if cfg.fp16_features else torch.float32
    autocast = amp_dtype(cfg.amp, env.device)
    autocast_name = str(autocast).replace("torch.", "") if autocast else "none"  # of the feature extraction
    if cfg.load_features:
        features, classes, weights_info, autocast_name = _load_features(cfg, env, feature_dtype)
    else:
        loaded = load_pretrained(cfg, env)
        model = build_model(loaded).to(env.device).eval()
        size = input_size(cfg, loaded)
        splits = knn_splits(cfg.dataset, cfg.data_path, size, cfg.crop_pct, cfg.train_subset, cfg.test_subset,
                            cfg.download)
        classes, weights_info = splits.num_classes, loaded.summary()
        batch = batch_per_process(cfg.batch_size, env.world_size)
        encode = cls_features(model)
        features = {}
        for split, dataset in (("train", splits.train), ("test", splits.test)):
            features[f"{split}_features"], features[f"{split}_labels"] = extract_features(
                encode, dataset, batch, env.device, cfg.num_workers, autocast, feature_dtype, progress=True)
        if cfg.dump_features and env.is_main:
            path = _feature_file(cfg.dump_features)
            save_checkpoint({**{k: v.cpu() for k, v in features.items()}, "num_classes": classes,
                             "weights": weights_info, "img_size": size, "dataset": cfg.dataset,
                             "autocast": autocast_name}, path)
            print(f"saved features to {path}")
    results: dict[str, Any] = {}
    if env.is_main:
        accuracy = weighted_knn(features["train_features"], features["train_labels"], features["test_features"],
                                features["test_labels"], classes, ks, cfg.temperature, cfg.chunk_size)
        head = accuracy[cfg.headline_k]
        bank, tests = len(features["train_features"]), len(features["test_features"])
        results = {"protocol": "weighted kNN", "dataset": cfg.dataset, "headline_k": cfg.headline_k,
                   "top1": head["top1"], "top5": head["top5"], "temperature": cfg.temperature,
                   "train_images": bank, "test_images": tests,
                   "feature_dtype": str(feature_dtype).replace("torch.", ""),
                   "autocast": autocast_name,
                   "knn": {str(k): v for k, v in accuracy.items()}, "weights": weights_info, "preset": cfg.preset}
        write_results(output_dir, results)
        source = weights_info.get("source", "?") if isinstance(weights_info, dict) else "?"
        encoder = weights_info.get("encoder", "") if isinstance(weights_info, dict) else ""
        # SelfPatch's ViT has no CLS token: its feature is the SelfPatch head's aggregate of the patch tokens
        backbone = weights_info.get("backbone", {}) if isinstance(weights_info, dict) else {}
        feature = "SelfPatch image vector" if backbone.get("selfpatch_head") else "CLS token"
        print(f"\nWeighted kNN (T={cfg.temperature}) on {cfg.dataset}: {bank} bank / {tests} test images; "
              f"features: {feature} of {encoder + ' of ' if encoder else ''}{source}")
        print("     k   top-1   top-5")
        for k in ks:
            mark = "   <- headline" if k == cfg.headline_k else ""
            print(f"  {k:4d}  {accuracy[k]['top1']:6.2f}  {accuracy[k]['top5']:6.2f}{mark}")
        print(f"results: {output_dir / 'results.json'}")
    publish_results(cfg, output_dir, results, env.is_main, "knn")
    barrier()
    return results
