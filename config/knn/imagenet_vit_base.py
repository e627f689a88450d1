"""ImageNet-1K, ViT-B/16: weighted kNN (k=20) of the released pretraining weights (imagenet-vit-base-pretrain).

Paper result (top-1): 76.2. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import IMAGENET, IMAGENET_OFFICIAL

CONFIG = {**IMAGENET, "dataset": "imagenet", "pretrained_weights": "imagenet-vit-base-pretrain",
          "output_dir": "output/knn/imagenet_vit_base"}
OFFICIAL = dict(IMAGENET_OFFICIAL)
