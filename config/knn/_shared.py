"""Shared pieces of the kNN recipes (official config/knn: batch 256 on CIFAR, 1024 on ImageNet, one GPU).

A recipe combines a dataset base with the released weights it evaluates::

    CONFIG = {**CIFAR, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-tiny-pretrain"}
    OFFICIAL = dict(CIFAR_OFFICIAL)

Everything else keeps the defaults of ``patchmix.evaluation.knn.KnnConfig``: CLS token of the momentum encoder,
T = 0.07, k in (10, 20, 100, 200) with k = 20 as the headline. The official code's random 1000-d head on the
CLS token (a bug, spec 7.8) is not reproduced by any preset.
"""

# Test images: the standard crop of the dataset (patchmix.data.standard_crop_pct: CIFAR as they are, ImageNet
# resize 256 and centre crop 224). Official CIFAR: resized to 36 px, then centre-cropped to 32.
CIFAR = {"batch_size": 256, "num_workers": 8}
CIFAR_OFFICIAL = {"crop_pct": 32 / 36}

IMAGENET = {"dataset": "imagenet", "batch_size": 1024, "num_workers": 10}
IMAGENET_OFFICIAL: dict = {}
