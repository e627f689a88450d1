"""CPU demo of SelfPatch: a small ViT on Fashion-MNIST for a few minutes, then kNN of learned vs random-init features.

Fashion-MNIST installs offline (``apt-get install dataset-fashion-mnist``) or downloads with ``--download``.
SelfPatch's recipe scaled down as ``dino_demo.py`` scales DINO's, with the same ViT (6 blocks, 128-d, 7-px patches:
a 4x4 grid at 28 px), lighter blur, saturation and hue jitter off (the images are grey), no drop path. The local
crops are 21 px (a 3x3 grid: the smallest with a full 3x3 neighbourhood around every patch; DINO's demo uses 14 px),
2 of them. A SelfPatch step costs about three DINO steps of the same batch here (the patch head runs on every token,
the teacher aggregates the neighbours of every patch), so the heads are narrower (256 hidden, 64 bottleneck; 1024
image and 256 patch prototypes) and the run is short: one epoch on 4,000 images in batches of 32. Without BatchNorm
in the heads (SelfPatch's heads run on token tensors, where the official code cannot use it), a fast teacher (0.96,
as DINO's demo) and a higher lr (5e-4) collapsed here (kNN below random init); 0.99 and 1.25e-4 trained without
collapse. The kNN reads the teacher's image vector (its SelfPatch head over all patch tokens).
"""

CONFIG = {
    "method": "selfpatch", "dataset": "fashion_mnist", "img_size": 28, "patch_size": 7,
    "arch": "vit_tiny", "embed_dim": 128, "depth": 6, "num_heads": 4, "drop_path": 0.0,
    "out_dim": 1024, "out_dim_selfpatch": 256, "hidden_dim": 256, "bottleneck_dim": 64, "momentum_teacher": 0.99,
    "local_crops_number": 2, "local_crop_size": 21, "global_crops_scale": (0.4, 1.0), "local_crops_scale": (0.1, 0.4),
    "blur_probs": (0.5, 0.1, 0.2), "color_jitter": (0.4, 0.4, 0.0, 0.0), "train_subset": 4000,
    "epochs": 1, "warmup_epochs": 0.1, "batch_size": 32, "base_lr": 1e-3, "freeze_last_layer": 0,
    "num_workers": 2, "save_freq": 1, "log_freq": 5, "output_dir": "output/selfpatch_demo",
    "knn_eval": True, "knn_train_subset": 10000, "knn_test_subset": 2000,
}
OFFICIAL: dict = {}  # no fp16 on the CPU
