"""ImageNet-1K, ViT-S/16: fine-tuning of the released pretraining weights (imagenet-vit-small-pretrain).

Paper result (top-1): 82.8. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import IMAGENET, IMAGENET_OFFICIAL, VIT_SMALL

CONFIG = {**IMAGENET, **VIT_SMALL, "dataset": "imagenet", "pretrained_weights": "imagenet-vit-small-pretrain",
          "output_dir": "output/finetune/imagenet_vit_small"}
OFFICIAL = dict(IMAGENET_OFFICIAL)
