"""CIFAR-100, ViT-B/2: fine-tuning of the released pretraining weights (cifar100-vit-base-pretrain).

Paper result (top-1): 86.0. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_BASE

CONFIG = {**CIFAR, **VIT_BASE, "dataset": "cifar100", "pretrained_weights": "cifar100-vit-base-pretrain",
          "output_dir": "output/finetune/cifar100_vit_base"}
OFFICIAL = dict(CIFAR_OFFICIAL)
