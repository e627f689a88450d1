"""CIFAR-100, ViT-T/2: weighted kNN (k=20) of the released pretraining weights (cifar100-vit-tiny-pretrain).

Paper result (top-1): 68.8. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL

CONFIG = {**CIFAR, "dataset": "cifar100", "pretrained_weights": "cifar100-vit-tiny-pretrain",
          "output_dir": "output/knn/cifar100_vit_tiny"}
OFFICIAL = dict(CIFAR_OFFICIAL)
