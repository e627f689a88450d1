"""DINO on CIFAR-10, ViT-S/2 at 32 px, 800 epochs, batch 512 (2 global 32-px + 8 local 16-px crops).

The PatchMix authors' DINO settings for CIFAR are not published; where each value comes from is in ``_shared.py``
(DINO_CIFAR). The PatchMix paper reports for DINO here (Table 3, fine-tune / linear / kNN top-1): 96.3 / 92.6 / 91.8.
"""

from ._shared import DINO_CIFAR, DINO_CIFAR_VIT_SMALL

CONFIG = {**DINO_CIFAR, **DINO_CIFAR_VIT_SMALL, "dataset": "cifar10", "output_dir": "output/dino_cifar10_vit_small"}
OFFICIAL: dict = {}  # no official DINO CIFAR code: both presets are the same
