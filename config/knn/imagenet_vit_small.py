"""ImageNet-1K, ViT-S/16: weighted kNN (k=20) of the released pretraining weights (imagenet-vit-small-pretrain).

Paper result (top-1): 73.3. Pass --pretrained-weights to evaluate your own checkpoint instead.
"""

from ._shared import IMAGENET, IMAGENET_OFFICIAL

CONFIG = {**IMAGENET, "dataset": "imagenet", "pretrained_weights": "imagenet-vit-small-pretrain",
          "output_dir": "output/knn/imagenet_vit_small"}
OFFICIAL = dict(IMAGENET_OFFICIAL)
