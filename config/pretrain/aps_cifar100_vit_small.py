"""APS on CIFAR-100, ViT-S/2 at 32 px, 1600 epochs (3200: --epochs 3200), batch 512.

Fine-tuning top-1 reported by the APS paper: 84.9 (1600 epochs), 85.3 (3200 epochs).
"""

from ._shared import APS_CIFAR, APS_OFFICIAL, APS_VIT_SMALL

CONFIG = {**APS_CIFAR, **APS_VIT_SMALL, "dataset": "cifar100", "output_dir": "output/aps_cifar100_vit_small"}
OFFICIAL = dict(APS_OFFICIAL)
