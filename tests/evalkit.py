"""Fabricated weight files in every format the loader supports, for the evaluation and weights tests.

All use the tiny ViT of ``conftest.TINY_PRETRAIN`` (16-px images, 4-px patches, 2 blocks, 32-d, 2 heads) unless
a named size is needed, so every test runs in well under a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from patchmix.checkpoint import save_checkpoint
from patchmix.methods import PatchMix
from patchmix.models import build_backbone

TINY = {"arch": "vit_tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_FLAGS = ["--config", "demo", "--img-size", "16", "--num-workers", "0", "--device", "cpu", "--dataset",
              "fashion_mnist"]


def tiny_pretraining_model(use_momentum: bool = True, seed: int = 0) -> PatchMix:
    """A PatchMix model whose momentum encoder differs from its online encoder (as after training)."""
    torch.manual_seed(seed)
    model = PatchMix(TINY, drop_path_rate=0.0, hidden_dim=64, out_dim=32, use_momentum=use_momentum)
    if use_momentum:
        with torch.no_grad():
            for p in model.momentum_encoder.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def save_ours(model: PatchMix, path: Path, backbone: dict | None = None) -> Path:
    """Our pretraining checkpoint layout (as main_pretrain.py writes it)."""
    return save_checkpoint({"format_version": 1, "model": model.state_dict(), "optimizer": {}, "scaler": {},
                            "epoch": 1, "step_in_epoch": 0, "global_step": 4, "rng": {},
                            "backbone": dict(backbone or TINY), "config": {"arch": "vit_tiny"}}, path)


def save_official_pretraining(model: PatchMix, path: Path, prefix: str = "", last: bool = False) -> Path:
    """The official layout: ``{"state_dict", "epoch", "arch", "optimizer", "scaler"}`` (``last.pth``: only
    ``state_dict``), optionally with DDP's ``module.`` prefix. Saved with plain torch.save, like the original."""
    state_dict = {prefix + k: v for k, v in model.state_dict().items()}
    content = {"state_dict": state_dict} if last else {"state_dict": state_dict, "epoch": 800, "arch": "vit-tiny",
                                                       "optimizer": {"state": {}, "param_groups": []},
                                                       "scaler": {"scale": 65536.0}}
    torch.save(content, path)
    return path


def official_classifier(seed: int = 0, classes: int = 4, **sizes) -> torch.nn.Module:
    """A ViT with a Linear classifier head, as the official linear / fine-tune scripts save it."""
    torch.manual_seed(seed)
    model = build_backbone(**{**TINY, **sizes})
    model.reset_classifier(classes)
    return model
