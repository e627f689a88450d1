"""CIFAR-100, ViT-T/2: fine-tuning of the released pretraining weights (cifar100-vit-tiny-pretrain).

Paper result (top-1): 84.9. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import CIFAR, CIFAR_OFFICIAL, VIT_TINY

CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar100", "pretrained_weights": "cifar100-vit-tiny-pretrain",
          "output_dir": "output/finetune/cifar100_vit_tiny"}
OFFICIAL = dict(CIFAR_OFFICIAL)
