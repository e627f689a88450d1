"""CIFAR-10, ViT-B/2: weighted kNN (k=20) of the released pretraining weights (cifar10-vit-base-pretrain).

Paper result (top-1): 95.8. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL

CONFIG = {**CIFAR, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-base-pretrain",
          "output_dir": "output/knn/cifar10_vit_base"}
OFFICIAL = dict(CIFAR_OFFICIAL)
