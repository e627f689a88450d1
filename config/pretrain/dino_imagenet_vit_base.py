"""DINO on ImageNet-1K, ViT-B/16 (12 heads) at 224 px, 100 epochs, batch 1024: the official README's ViT-B command.

Source, README "DINO with ViT-base network": ``run_with_submitit.py --nodes 2 --ngpus 8 --use_volta32 --arch
vit_base`` (16 GPUs x 64 images = batch 1024); every other value is a default of ``main_dino.py`` (see
``_shared.py``): 100 epochs, teacher temperature 0.04 without warm-up, last layer normalised (the README keeps it
for ViT-B: removing it is "only safe with vit_small"), lr 5e-4 x 1024 / 256.

The released ViT-B/16 weights (kNN 76.1 / linear 78.2) come from a longer run whose arguments are in the
``args.txt`` published next to them; this recipe is the README's command, not that run.
"""

from ._shared import DINO_IMAGENET, DINO_OFFICIAL

CONFIG = {**DINO_IMAGENET, "arch": "vit_base", "batch_size": 1024, "output_dir": "output/dino_imagenet_vit_base"}
OFFICIAL = dict(DINO_OFFICIAL)
