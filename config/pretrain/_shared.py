"""Shared pieces of the pretraining recipes (spec of the official configs: 800 epochs on CIFAR, 300 on ImageNet).

A recipe module combines one dataset base with one architecture::

    CONFIG = {**CIFAR, **VIT_SMALL, "dataset": "cifar10"}
    OFFICIAL = {**CIFAR_OFFICIAL, **VIT_SMALL_OFFICIAL}

``CONFIG`` holds the paper's values; ``OFFICIAL`` the changes ``--preset official`` applies to match the
authors' released code. Everything not listed keeps the defaults of ``patchmix.methods.PatchMixConfig``
(temperature 0.2, heads 4096/256, drop path 0.1, o2o smoothing 0.1, AdamW, weight decay 0.04 -> 0.4, ...).
"""

# The official code differs from the paper in these ways on every recipe (README, "Paper vs. official code").
COMMON_OFFICIAL = {"num_mix": 2, "momentum_per_epoch": True, "amp": "fp16"}  # fp16 autocast + GradScaler

CIFAR = {"method": "patchmix", "img_size": 32, "patch_size": 2, "crop_min": 0.1, "epochs": 800, "warmup_epochs": 100,
         "batch_size": 512, "save_freq": 100, "num_workers": 8}
CIFAR_OFFICIAL = dict(COMMON_OFFICIAL)

# Paper: two 224-px views with crops of (0.05, 1). Official configs: 8 extra 96-px crops, each also mixed, and
# global crops of (0.35, 1).
IMAGENET = {"method": "patchmix", "dataset": "imagenet", "img_size": 224, "patch_size": 16, "crop_min": 0.05, "epochs": 300,
            "warmup_epochs": 10, "batch_size": 1024, "save_freq": 10, "num_workers": 10}
IMAGENET_OFFICIAL = {**COMMON_OFFICIAL, "local_crops_number": 8, "crop_min": 0.35}

VIT_TINY = {"arch": "vit_tiny", "base_lr": 2e-3, "weight_decay": 0.02, "weight_decay_end": 0.2}
VIT_TINY_OFFICIAL = {"use_momentum": False}  # the official ViT-T code trains without a momentum encoder
VIT_SMALL = {"arch": "vit_small", "base_lr": 5e-4}
VIT_SMALL_OFFICIAL: dict = {}
VIT_BASE = {"arch": "vit_base", "base_lr": 7.5e-4}
VIT_BASE_OFFICIAL: dict = {}

# APS (Asymmetric Patch Sampling), the official CIFAR recipe (visresearch/aps config/pretrain/*.py and
# main_pretrain.py): batch 512, 1600 epochs (the command-line default of the official script; its config files say
# 3200, one flag away: --epochs 3200), 20 warm-up epochs, AdamW with constant weight decay 0.05, temperature 0.1,
# 4 samplings of 25% of the patches with power 3. Everything else: patchmix.methods.aps.APSConfig.
APS_CIFAR = {"method": "aps", "img_size": 32, "patch_size": 2, "epochs": 1600, "warmup_epochs": 20,
             "batch_size": 512, "save_freq": 100, "num_workers": 8}
# The official code ignores flips when it maps the views onto each other, and trains in fp16 with a GradScaler.
APS_OFFICIAL = {"respect_flips": False, "amp": "fp16"}
APS_VIT_TINY = {"arch": "vit_tiny", "base_lr": 1e-3}
APS_VIT_SMALL = {"arch": "vit_small", "base_lr": 5e-4}  # 6 heads, as the official APS ViT-S
APS_VIT_BASE = {"arch": "vit_base", "base_lr": 5e-4}
