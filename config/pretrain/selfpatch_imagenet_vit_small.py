"""SelfPatch on ImageNet-1K, ViT-S/16 (6 heads, no CLS token) at 224 px, 300 epochs, batch 1024: the official recipe.

Source of every value (``_shared.py`` and ``patchmix.methods.selfpatch.SelfPatchConfig`` repeat them):

* the official README, "Pretraining on ImageNet": ``python -m torch.distributed.launch --nproc_per_node=8
  main_selfpatch.py --arch vit_small --local_crops_number 8 --patch_size 16 --batch_size_per_gpu 128
  --out_dim_selfpatch 4096 --k_num 4``: ViT-S/16, 8 local crops, batch 8 x 128 = 1024, 4096 patch prototypes,
  4 neighbours per patch;
* the defaults of ``main_selfpatch.py`` for everything else: 300 epochs, 2 global 224-px crops of area (0.25, 1)
  and 96-px local crops of (0.05, 0.25), 65536 image prototypes, head 2048 / 256 with its last layer normalised
  (``norm_last_layer`` true) and frozen for 1 epoch, teacher temperature 0.04 without warm-up, student temperature
  0.1, centre momentum 0.9 for both centres, teacher momentum 0.996 -> 1, AdamW with lr 5e-4 x 1024 / 256 after 10
  warm-up epochs and a cosine to 1e-6, weight decay 0.04 -> 0.4, per-tensor clipping at 3.0, drop path 0.1 on the
  student, patch loss weight 0.1 (a constant of its loss), seed 0, fp16 with a GradScaler (``--preset official``;
  ``--amp fp16`` on any preset).

The SelfPatch paper trains for 200 epochs; the code's default, kept here, is 300 (``--epochs 200`` for the
paper's). The README reports no ImageNet classification number; its results are dense transfer (COCO Mask R-CNN 1x:
42.1 AP box / 38.5 AP mask; ADE20K Semantic FPN: 41.2 mIoU) with the released ViT-S/16.
"""

from ._shared import SELFPATCH_IMAGENET, SELFPATCH_OFFICIAL

CONFIG = {**SELFPATCH_IMAGENET, "arch": "vit_small", "epochs": 300, "batch_size": 1024, "out_dim_selfpatch": 4096,
          "k_num": 4, "output_dir": "output/selfpatch_imagenet_vit_small"}
OFFICIAL = dict(SELFPATCH_OFFICIAL)
