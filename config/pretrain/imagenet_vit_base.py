"""ImageNet-1K, ViT-B/16 at 224 px, 300 epochs, batch 1024. Paper results (fine-tune / linear / kNN top-1): 84.1 / 80.2 / 76.2."""

from ._shared import IMAGENET, IMAGENET_OFFICIAL, VIT_BASE, VIT_BASE_OFFICIAL

CONFIG = {**IMAGENET, **VIT_BASE}
OFFICIAL = {**IMAGENET_OFFICIAL, **VIT_BASE_OFFICIAL}
