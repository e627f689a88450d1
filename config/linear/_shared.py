"""Shared pieces of the linear-probe recipes (official protocol, spec 5.2).

A recipe combines a dataset base with an architecture's learning rate::

    CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-tiny-pretrain"}
    OFFICIAL = dict(CIFAR_OFFICIAL)

Everything else keeps the defaults of ``patchmix.evaluation.linear.LinearConfig``, which are the official values: frozen
backbone (CLS token of the momentum encoder), a plain linear classifier (no BatchNorm), SGD with Nesterov
momentum 0.9 and no weight decay, cosine to 0 over 100 epochs without warm-up, RandomResizedCrop(0.08-1,
bicubic) + flip. The official code reports the best epoch (chosen on the test set); results.json has both the
last epoch (headline) and the best.
"""

# lr = BASE_LR x BATCH_SIZE / 256: CIFAR batch 256 (lr unchanged), ImageNet batch 1024 (lr x 4).
CIFAR = {"batch_size": 256, "epochs": 100, "num_workers": 8}
CIFAR_OFFICIAL = {"crop_pct": 32 / 36, "lr_per_epoch": True}  # test images 32 -> 36 -> centre crop 32
IMAGENET = {"dataset": "imagenet", "batch_size": 1024, "epochs": 100, "num_workers": 10}
IMAGENET_OFFICIAL = {"lr_per_epoch": True}

VIT_TINY = {"base_lr": 0.05}
VIT_SMALL = {"base_lr": 0.02}
VIT_BASE = {"base_lr": 0.01}
