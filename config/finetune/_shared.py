"""Shared pieces of the fine-tuning recipes (official protocol, spec 5.3).

A recipe combines a dataset base with an architecture's learning rate::

    CONFIG = {**CIFAR, **VIT_TINY, "dataset": "cifar10", "pretrained_weights": "cifar10-vit-tiny-pretrain"}
    OFFICIAL = dict(CIFAR_OFFICIAL)

Everything else keeps the defaults of ``patchmix.evaluation.finetune.FinetuneConfig``, which are the official values:
AdamW, weight decay 0.05, layer-wise lr decay 0.75, drop path 0.1, 100 epochs with 10 of warm-up from 1e-6,
cosine to 1e-5, RandAugment rand-m9-mstd0.5-inc1, RandomErasing 0.25, Mixup 0.8 / CutMix 1.0 (switch 0.5),
label smoothing 0.1. The official code reports the best epoch; results.json has the last (headline) and best.
"""

# CIFAR: RandomCrop(32, padding 4) instead of RandomResizedCrop; test images as they are. Batch 256.
CIFAR = {"batch_size": 256, "crop_padding": 4, "num_workers": 8}
CIFAR_OFFICIAL = {"lr_per_epoch": True}
# ImageNet: RandomResizedCrop(224, 0.08-1); test resize 256, centre crop 224. Batch 1024 (lr x 4).
IMAGENET = {"dataset": "imagenet", "batch_size": 1024, "num_workers": 10}
IMAGENET_OFFICIAL = {"lr_per_epoch": True}

# lr = BASE_LR x BATCH_SIZE / 256
VIT_TINY = {"base_lr": 1e-3}
VIT_SMALL = {"base_lr": 5e-4}
VIT_BASE = {"base_lr": 5e-4}

# APS's own fine-tuning recipe (visresearch/aps config/finetune/*.py and main_finetune.py; it differs from
# PatchMix's): batch 128 with lr = lr_base x batch / 512 (here as a base per 256: half the official lr_base), no
# layer-wise decay, 5 warm-up epochs from 1e-6, cosine to 1e-5 over 100 epochs, drop path configured (0.1) but
# not wired into its ViT (0 here), the model EMA kept but never evaluated (off here), ImageNet normalisation
# (its pretraining used CIFAR's), RandomCrop(32, padding 4) + RandAugment + RandomErasing 0.25 + Mixup/CutMix.
APS_CIFAR = {"batch_size": 128, "crop_padding": 4, "num_workers": 8, "layer_decay": 1.0, "warmup_epochs": 5,
             "drop_path": 0.0, "seed": 0}
APS_CIFAR_OFFICIAL = {"lr_per_epoch": True}
APS_VIT_TINY = {"base_lr": 1e-3}    # official lr_base 2e-3 x 128 / 512 = 5e-4 = 1e-3 x 128 / 256
APS_VIT_SMALL = {"base_lr": 5e-4}   # official 1e-3
APS_VIT_BASE = {"base_lr": 2.5e-4}  # official 5e-4
