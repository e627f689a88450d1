"""CIFAR-10, ViT-T/2: weighted kNN (k=20) of the released pretraining weights (cifar10-vit-tiny-pretrain).

Paper result (top-1): 92.9. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL

CONFIG = {**CIFAR, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-tiny-pretrain",
          "output_dir": "output/knn/cifar10_vit_tiny"}
OFFICIAL = dict(CIFAR_OFFICIAL)
