"""CIFAR-100, ViT-S/2 at 32 px, 800 epochs, batch 512. Paper results (fine-tune / linear / kNN top-1): 86.0 / 78.7 / 75.4."""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_SMALL, VIT_SMALL_OFFICIAL

CONFIG = {**CIFAR, **VIT_SMALL, "dataset": "cifar100"}
OFFICIAL = {**CIFAR_OFFICIAL, **VIT_SMALL_OFFICIAL}
