"""APS on CIFAR-10, ViT-T/2: fine-tuning with APS's own recipe (batch 128, no layer decay, 5 warm-up epochs).

Fine-tuning top-1 reported by the APS paper after 1600 pretraining epochs: 97.2. Pass --pretrained-weights with
the checkpoint of config/pretrain/aps_cifar10_vit_tiny.py (ours) or an official APS file.
"""

from ._shared import APS_CIFAR, APS_CIFAR_OFFICIAL, APS_VIT_TINY

CONFIG = {**APS_CIFAR, **APS_VIT_TINY, "dataset": "cifar10", "pretrained_weights": "aps-cifar10-vit-tiny-1600-pretrain",
          "output_dir": "output/finetune/aps_cifar10_vit_tiny"}
OFFICIAL = dict(APS_CIFAR_OFFICIAL)
