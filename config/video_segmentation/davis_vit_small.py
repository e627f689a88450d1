"""DAVIS-2017 val, ViT-S/16: label propagation through the patch tokens of the released ImageNet-1K weights
(imagenet-vit-small-pretrain, momentum encoder). Pass --data-path (the DAVIS-2017 folder) and, to evaluate your
own checkpoint, --pretrained-weights.

The DINO paper (arXiv 2104.14294, its DAVIS table) reports other self-supervised ViTs under the same protocol.
"""

from ._shared import DAVIS, DAVIS_OFFICIAL

CONFIG = {**DAVIS, "pretrained_weights": "imagenet-vit-small-pretrain",
          "output_dir": "output/video_segmentation/davis_vit_small"}
OFFICIAL = dict(DAVIS_OFFICIAL)
