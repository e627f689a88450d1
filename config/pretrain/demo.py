"""CPU demo: a small ViT on Fashion-MNIST for a few minutes, then kNN of learned vs random-init features.

Fashion-MNIST installs offline (``apt-get install dataset-fashion-mnist``) or downloads with ``--download``.
Everything else follows the paper's recipe, scaled down: 28-px images cut into 7-px patches (16 tokens), a
6-block 128-d ViT, narrow heads, a faster-moving momentum encoder for the short run, and lighter blur (a 2-px
blur on every 28-px view erases most of the image); saturation and hue jitter are off (the images are grey).
"""

CONFIG = {
    "method": "patchmix", "dataset": "fashion_mnist", "img_size": 28, "patch_size": 7, "crop_min": 0.25,
    "arch": "vit_tiny", "embed_dim": 128, "depth": 6, "num_heads": 4, "drop_path": 0.0,
    "hidden_dim": 512, "out_dim": 128, "momentum": 0.99,
    "blur_probs": (0.5, 0.1, 0.5), "color_jitter": (0.4, 0.4, 0.0, 0.0), "train_subset": 24000,
    "epochs": 3, "warmup_epochs": 0.5, "batch_size": 256, "base_lr": 2e-3, "weight_decay": 0.04,
    "num_workers": 2, "save_freq": 1, "log_freq": 5, "output_dir": "output/demo",
    "knn_eval": True, "knn_train_subset": 10000, "knn_test_subset": 2000,
}
OFFICIAL = {"num_mix": 2, "momentum_per_epoch": True}  # no fp16 on the CPU
