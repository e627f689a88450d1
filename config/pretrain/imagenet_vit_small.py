"""ImageNet-1K, ViT-S/16 at 224 px, 300 epochs, batch 1024. Paper results (fine-tune / linear / kNN top-1): 82.8 / 77.4 / 73.3."""

from ._shared import IMAGENET, IMAGENET_OFFICIAL, VIT_SMALL, VIT_SMALL_OFFICIAL

CONFIG = {**IMAGENET, **VIT_SMALL}
OFFICIAL = {**IMAGENET_OFFICIAL, **VIT_SMALL_OFFICIAL}
