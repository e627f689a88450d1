"""CPU demo of APS: a small ViT on Fashion-MNIST for a few minutes, then kNN of learned vs random-init features.

Fashion-MNIST installs offline (``apt-get install dataset-fashion-mnist``) or downloads with ``--download``.
The official CIFAR recipe, scaled down: 28-px images cut into 4-px patches (a 7 x 7 grid; each of the 4 samplings
per batch shows the ViT 12 of the 49 patches of each view), a 6-block 128-d ViT, narrower heads, a shorter
warm-up, and ImageNet normalisation (the grey images are far from CIFAR's colour statistics).
"""

CONFIG = {
    "method": "aps", "dataset": "fashion_mnist", "img_size": 28, "patch_size": 4, "normalization": "imagenet",
    "arch": "vit_tiny", "embed_dim": 128, "depth": 6, "num_heads": 4, "hidden_dim": 256, "out_dim": 128,
    "train_subset": 24000, "epochs": 3, "warmup_epochs": 0.5, "batch_size": 256, "base_lr": 1e-3,
    "num_workers": 2, "save_freq": 1, "log_freq": 5, "output_dir": "output/aps_demo",
    "knn_eval": True, "knn_train_subset": 10000, "knn_test_subset": 2000,
}
OFFICIAL = {"respect_flips": False}  # no fp16 on the CPU
