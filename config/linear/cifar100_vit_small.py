"""CIFAR-100, ViT-S/2: linear probe of the released pretraining weights (cifar100-vit-small-pretrain).

Paper result (top-1): 78.7. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_SMALL

CONFIG = {**CIFAR, **VIT_SMALL, "dataset": "cifar100", "pretrained_weights": "cifar100-vit-small-pretrain",
          "output_dir": "output/linear/cifar100_vit_small"}
OFFICIAL = dict(CIFAR_OFFICIAL)
