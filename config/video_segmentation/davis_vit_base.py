"""DAVIS-2017 val, ViT-B/16: label propagation through the patch tokens of the released ImageNet-1K weights
(imagenet-vit-base-pretrain, momentum encoder). Pass --data-path (the DAVIS-2017 folder) and, to evaluate your
own checkpoint, --pretrained-weights.
"""

from ._shared import DAVIS, DAVIS_OFFICIAL

CONFIG = {**DAVIS, "pretrained_weights": "imagenet-vit-base-pretrain",
          "output_dir": "output/video_segmentation/davis_vit_base"}
OFFICIAL = dict(DAVIS_OFFICIAL)
