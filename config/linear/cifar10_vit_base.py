"""CIFAR-10, ViT-B/2: linear probe of the released pretraining weights (cifar10-vit-base-pretrain).

Paper result (top-1): 96.6. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_BASE

CONFIG = {**CIFAR, **VIT_BASE, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-base-pretrain",
          "output_dir": "output/linear/cifar10_vit_base"}
OFFICIAL = dict(CIFAR_OFFICIAL)
