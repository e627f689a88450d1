"""CIFAR-10, ViT-T/2: fine-tuning of the released pretraining weights (cifar10-vit-tiny-pretrain).

Paper result (top-1): 97.5. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_TINY

CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-tiny-pretrain",
          "output_dir": "output/finetune/cifar10_vit_tiny"}
OFFICIAL = dict(CIFAR_OFFICIAL)
