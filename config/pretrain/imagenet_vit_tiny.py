"""ImageNet-1K, ViT-T/16 at 224 px, 300 epochs, batch 1024. No paper result for this pair (the official config exists but was not reported)."""

from ._shared import IMAGENET, IMAGENET_OFFICIAL, VIT_TINY, VIT_TINY_OFFICIAL

CONFIG = {**IMAGENET, **VIT_TINY}
OFFICIAL = {**IMAGENET_OFFICIAL, **VIT_TINY_OFFICIAL}
