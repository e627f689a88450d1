"""CIFAR-100, ViT-B/2 at 32 px, 800 epochs, batch 512. Paper results (fine-tune / linear / kNN top-1): 86.0 / 79.7 / 75.7."""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_BASE, VIT_BASE_OFFICIAL

CONFIG = {**CIFAR, **VIT_BASE, "dataset": "cifar100"}
OFFICIAL = {**CIFAR_OFFICIAL, **VIT_BASE_OFFICIAL}
