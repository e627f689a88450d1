"""APS on CIFAR-100, ViT-S/2: fine-tuning with APS's own recipe (batch 128, no layer decay, 5 warm-up epochs).

Fine-tuning top-1 reported by the APS paper after 1600 pretraining epochs: 84.9. Pass --pretrained-weights with
the checkpoint of config/pretrain/aps_cifar100_vit_small.py (ours) or an official APS file.
"""

from ._shared import APS_CIFAR, APS_CIFAR_OFFICIAL, APS_VIT_SMALL

CONFIG = {**APS_CIFAR, **APS_VIT_SMALL, "dataset": "cifar100", "pretrained_weights": "aps-cifar100-vit-small-1600-pretrain",
          "output_dir": "output/finetune/aps_cifar100_vit_small"}
OFFICIAL = dict(APS_CIFAR_OFFICIAL)
