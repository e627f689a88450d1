"""CIFAR-10, ViT-S/2 at 32 px, 800 epochs, batch 512. Paper results (fine-tune / linear / kNN top-1): 98.1 / 96.0 / 94.6."""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_SMALL, VIT_SMALL_OFFICIAL

CONFIG = {**CIFAR, **VIT_SMALL, "dataset": "cifar10"}
OFFICIAL = {**CIFAR_OFFICIAL, **VIT_SMALL_OFFICIAL}
