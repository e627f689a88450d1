"""CIFAR-100, ViT-T/2 at 32 px, 800 epochs, batch 512. Paper results (fine-tune / linear / kNN top-1): 84.9 / 74.7 / 68.8."""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_TINY, VIT_TINY_OFFICIAL

CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar100"}
OFFICIAL = {**CIFAR_OFFICIAL, **VIT_TINY_OFFICIAL}
