"""CIFAR-10, ViT-B/2 at 32 px, 800 epochs, batch 512. Paper results (fine-tune / linear / kNN top-1): 98.3 / 96.6 / 95.8."""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_BASE, VIT_BASE_OFFICIAL

CONFIG = {**CIFAR, **VIT_BASE, "dataset": "cifar10"}
OFFICIAL = {**CIFAR_OFFICIAL, **VIT_BASE_OFFICIAL}
