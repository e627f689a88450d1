"""APS on CIFAR-10, ViT-T/2 at 32 px, 1600 epochs (3200: --epochs 3200), batch 512.

Fine-tuning top-1 reported by the APS paper: 97.2 (1600 epochs), 97.5 (3200 epochs).
"""

from ._shared import APS_CIFAR, APS_OFFICIAL, APS_VIT_TINY

CONFIG = {**APS_CIFAR, **APS_VIT_TINY, "dataset": "cifar10", "output_dir": "output/aps_cifar10_vit_tiny"}
OFFICIAL = dict(APS_OFFICIAL)
