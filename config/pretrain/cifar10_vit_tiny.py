"""CIFAR-10, ViT-T/2 at 32 px, 800 epochs, batch 512. Paper results (fine-tune / linear / kNN top-1): 97.5 / 94.4 / 92.9."""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_TINY, VIT_TINY_OFFICIAL

CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar10"}
OFFICIAL = {**CIFAR_OFFICIAL, **VIT_TINY_OFFICIAL}
