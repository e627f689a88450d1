"""CPU demo: linear probe of the demo pretraining run (python main_pretrain.py) on Fashion-MNIST.

About 1.5 minutes on 2 CPU cores: 10000 training images, the full test set, 5 epochs. The architecture and
the 28-px resolution are read from the checkpoint. Everything else is the official protocol except two things
sized for the short demo: a higher learning rate, and no small crops (RandomResizedCrop area 1.0 instead of
0.08-1.0, so only the aspect ratio and flips vary) -- a few minutes of pretraining do not make the features
invariant to small crops (with the official 0.08 the probe loses ~15 points here).
"""

CONFIG = {"dataset": "fashion_mnist", "pretrained_weights": "output/demo/checkpoint.pth",
          "output_dir": "output/demo/linear", "train_subset": 10000, "epochs": 5, "batch_size": 256,
          "base_lr": 0.1, "crop_min": 1.0, "num_workers": 2, "log_freq": 5}
OFFICIAL: dict = {"lr_per_epoch": True}
