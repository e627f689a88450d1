"""CIFAR-10, ViT-S/2: linear probe of the released pretraining weights (cifar10-vit-small-pretrain).

Paper result (top-1): 96.0. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_SMALL

CONFIG = {**CIFAR, **VIT_SMALL, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-small-pretrain",
          "output_dir": "output/linear/cifar10_vit_small"}
OFFICIAL = dict(CIFAR_OFFICIAL)
