"""ImageNet-1K, ViT-B/16: fine-tuning of the released pretraining weights (imagenet-vit-base-pretrain).

Paper result (top-1): 84.1. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import IMAGENET, IMAGENET_OFFICIAL, VIT_BASE

CONFIG = {**IMAGENET, **VIT_BASE, "dataset": "imagenet", "pretrained_weights": "imagenet-vit-base-pretrain",
          "output_dir": "output/finetune/imagenet_vit_base"}
OFFICIAL = dict(IMAGENET_OFFICIAL)
