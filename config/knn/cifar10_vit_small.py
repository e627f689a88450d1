"""CIFAR-10, ViT-S/2: weighted kNN (k=20) of the released pretraining weights (cifar10-vit-small-pretrain).

Paper result (top-1): 94.6. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL

CONFIG = {**CIFAR, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-small-pretrain",
          "output_dir": "output/knn/cifar10_vit_small"}
OFFICIAL = dict(CIFAR_OFFICIAL)
