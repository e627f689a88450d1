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

# DINO (facebookresearch/dino). main_dino.py's defaults are those of patchmix.methods.dino.DINOConfig: ViT-S/16, 100
# epochs, 2 global 224-px crops of area (0.4, 1) + 8 local 96-px crops of (0.05, 0.4), AdamW with lr 5e-4 x batch /
# 256 after a 10-epoch linear warm-up and a cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine), teacher momentum
# 0.996 -> 1 (cosine, per iteration), teacher temperature 0.04 (no warm-up), student temperature 0.1, centre momentum
# 0.9, head 2048 / 256 / 65536 without BatchNorm, last layer weight-normalised with its norm frozen and not updated
# during the first epoch, per-tensor gradient clipping at 3.0, drop path 0.1 on the student, seed 0. The README's
# commands change only what each recipe lists; the batch is theirs: 64 per GPU (batch_size_per_gpu) times the GPUs
# of the command (8 with torch.distributed.launch --nproc_per_node=8, 16 with run_with_submitit.py's default 2
# nodes x 8 GPUs).
DINO_IMAGENET = {"method": "dino", "dataset": "imagenet", "img_size": 224, "patch_size": 16, "save_freq": 20,
                 "num_workers": 10}
# main_dino.py trains in fp16 with a GradScaler (use_fp16 defaults to true; no README command turns it off); the
# paper does not mention the precision. Our default is bf16 where the GPU has it (--amp auto).
DINO_OFFICIAL = {"amp": "fp16"}

# DINO on CIFAR at 32 px with 2-px patches. The PatchMix paper compares with DINO on CIFAR (its Table 3: 800 epochs,
# batch 512, ViT-T/2, S/2, B/2) but its authors did not publish the DINO settings or code. We keep everything of DINO
# (main_dino.py and the README's ViT-S run: teacher temperature 0.04 -> 0.07 over 30 epochs, lr 5e-4 x batch / 256,
# 10 warm-up epochs, 65536 prototypes, ...) and take from the PatchMix paper what its table fixes: 800 epochs, batch
# 512, patch 2. Multi-crop scaled to 32 px: 2 global 32-px crops + 8 local 16-px crops (half the side, as 96 / 224
# is about 0.43), DINO's area ranges. This crop set is also what Table 3's FLOPs imply: DINO / MoCo v3 = 80.2 / 44.4,
# 311.4 / 175.6 and 1237.2 / 700.0 = 1.81, 1.77, 1.77 for T, S, B; counting MoCo v3 as 2 views x (forward +
# backward) + 2 momentum forwards = 8 forward units, 2 x 32 px + 8 x 16 px gives 8 + 8 x 3 x 65 / 257 = 14.1 units,
# a ratio of 1.76. fp16 stays off in both presets: DINO's README advises against it for patches smaller than 16.
DINO_CIFAR = {"method": "dino", "img_size": 32, "patch_size": 2, "epochs": 800, "batch_size": 512,
              "local_crops_number": 8, "local_crop_size": 16, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
              "warmup_teacher_temp_epochs": 30, "save_freq": 100, "num_workers": 8}
# ViT-S: the README removes the last layer's normalisation for ViT-S only ("only safe with --arch vit_small").
DINO_CIFAR_VIT_TINY = {"arch": "vit_tiny", "norm_last_layer": True}
DINO_CIFAR_VIT_SMALL = {"arch": "vit_small", "norm_last_layer": False}

# SelfPatch (alinlab/SelfPatch), built on DINO. main_selfpatch.py's defaults are those of
# patchmix.methods.selfpatch.SelfPatchConfig: DINO's (above) except 300 epochs, global crops of area (0.25, 1) and
# local crops of (0.05, 0.25), and SelfPatch's own: a second DINO head of 4096 prototypes for the patch vectors
# (out_dim_selfpatch), k_num 4 neighbours aggregated per patch, patch loss weight 0.1 (hard-coded in its loss). The
# README's command adds --arch vit_small --local_crops_number 8 --patch_size 16 --batch_size_per_gpu 128 on 8 GPUs
# (batch 1024) and repeats --out_dim_selfpatch 4096 --k_num 4.
SELFPATCH_IMAGENET = {"method": "selfpatch", "dataset": "imagenet", "img_size": 224, "patch_size": 16,
                      "local_crops_number": 8, "local_crop_size": 96, "save_freq": 10, "num_workers": 10}
# main_selfpatch.py trains in fp16 with a GradScaler (use_fp16 defaults to true); our default is bf16 where the GPU
# has it (--amp auto).
SELFPATCH_OFFICIAL = {"amp": "fp16"}
