"""Ready models from loaded weights: the timm ViT, the file's classifier head, and the torch.hub entries.

:mod:`patchmix.weights.layout` stops at tensors and the ``build_backbone`` arguments; this is the step that
makes ``nn.Module`` objects of them, used by the evaluation scripts, the tools and ``hubconf.py``.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from patchmix.models import build_backbone
from patchmix.weights.errors import WeightsError
from patchmix.weights.layout import LoadedWeights, load_weights
from patchmix.weights.registry import get_released


def build_head(head: dict[str, torch.Tensor]) -> nn.Module:
    """The classifier stored in ``head`` (``head.weight`` = Linear; ``head.0.running_mean`` + ``head.1.weight``
    = BatchNorm1d without affine, then Linear), with those tensors loaded."""
    if "head.weight" in head:
        weight = head["head.weight"]
        module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias="head.bias" in head)
    elif "head.1.weight" in head and "head.0.running_mean" in head:
        weight = head["head.1.weight"]
        module = nn.Sequential(nn.BatchNorm1d(weight.shape[1], affine="head.0.weight" in head, eps=1e-6),
                               nn.Linear(weight.shape[1], weight.shape[0], bias="head.1.bias" in head))
    else:
        raise WeightsError(f"unsupported classifier head ({', '.join(head) or 'none'}); expected head.weight.")
    module.load_state_dict({k[len("head."):]: v for k, v in head.items()})
    return module


def build_model(loaded: LoadedWeights, drop_path_rate: float = 0.0, with_head: bool = False) -> nn.Module:
    """The timm ViT of ``loaded`` with its weights (strict), optionally with the file's classifier head."""
    model = build_backbone(drop_path_rate=drop_path_rate, **loaded.backbone)
    model.load_state_dict(loaded.state_dict, strict=True)
    if with_head:
        if not loaded.head:
            raise WeightsError(f"{loaded.source} has no classifier head (it is a backbone / pretraining file); "
                               f"train one with main_linear.py or main_finetune.py.")
        model.head = build_head(loaded.head)
        model.num_classes = loaded.num_classes
    return model


def hub_model(dataset: str, arch: str, pretrained: bool = True, weights: str = "pretrain",
              drop_path_rate: float = 0.0, weights_dir: str | os.PathLike | None = None) -> nn.Module:
    """A released PatchMix ViT (the ``hubconf.py`` entries).

    ``weights="pretrain"`` gives the backbone (CLS-token features, ``num_classes=0``) of the pretraining file
    (momentum encoder, or the online encoder for ViT-T); ``"linear"`` / ``"finetune"`` give the released
    classifier (backbone + head). ``pretrained=False`` builds the same architecture with random weights.
    """
    if weights not in ("pretrain", "linear", "finetune"):
        raise ValueError(f"weights must be pretrain, linear or finetune, got {weights!r}.")
    entry = get_released(f"{dataset}-{arch.replace('_', '-')}-{weights}")
    if not pretrained:
        model = build_backbone(drop_path_rate=drop_path_rate, **entry.backbone_kwargs())
        if weights != "pretrain":
            model.reset_classifier({"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset])
        return model
    loaded = load_weights(entry.name, weights_dir=weights_dir)
    return build_model(loaded, drop_path_rate=drop_path_rate, with_head=weights != "pretrain")
