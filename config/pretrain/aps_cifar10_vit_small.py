"""APS on CIFAR-10, ViT-S/2 at 32 px, 1600 epochs (3200: --epochs 3200), batch 512.

Fine-tuning top-1 reported by the APS paper: 98.1 (1600 epochs), 98.2 (3200 epochs).
"""

from ._shared import APS_CIFAR, APS_OFFICIAL, APS_VIT_SMALL

CONFIG = {**APS_CIFAR, **APS_VIT_SMALL, "dataset": "cifar10", "output_dir": "output/aps_cifar10_vit_small"}
OFFICIAL = dict(APS_OFFICIAL)
