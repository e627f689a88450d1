"""CIFAR-10, ViT-T/2: linear probe of the released pretraining weights (cifar10-vit-tiny-pretrain).

Paper result (top-1): 94.4. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_TINY

CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-tiny-pretrain",
          "output_dir": "output/linear/cifar10_vit_tiny"}
OFFICIAL = dict(CIFAR_OFFICIAL)
