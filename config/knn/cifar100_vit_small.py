"""CIFAR-100, ViT-S/2: weighted kNN (k=20) of the released pretraining weights (cifar100-vit-small-pretrain).

Paper result (top-1): 75.4. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL

CONFIG = {**CIFAR, "dataset": "cifar100", "pretrained_weights": "cifar100-vit-small-pretrain",
          "output_dir": "output/knn/cifar100_vit_small"}
OFFICIAL = dict(CIFAR_OFFICIAL)
