"""CIFAR-100, ViT-S/2: fine-tuning of the released pretraining weights (cifar100-vit-small-pretrain).

Paper result (top-1): 86.0. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_SMALL

CONFIG = {**CIFAR, **VIT_SMALL, "dataset": "cifar100", "pretrained_weights": "cifar100-vit-small-pretrain",
          "output_dir": "output/finetune/cifar100_vit_small"}
OFFICIAL = dict(CIFAR_OFFICIAL)
