"""CPU demo: fine-tuning of the demo pretraining run (python main_pretrain.py) on Fashion-MNIST.

About 1-2 minutes on 2 CPU cores: 8000 training images, the full test set, 3 epochs (1 of warm-up). The
architecture and the 28-px resolution are read from the checkpoint. The optimisation is the official recipe
(AdamW, layer decay 0.75, drop path 0.1, label smoothing 0.1) with a higher learning rate; the heavy
regularisation (RandAugment, RandomErasing, Mixup/CutMix) is off because it needs far more than 3 epochs to
pay off -- the dataset recipes (--config cifar10_vit_tiny, ...) keep all of it. Augmentation here:
RandomCrop(28, padding 2) + flip.
"""

CONFIG = {"dataset": "fashion_mnist", "pretrained_weights": "output/demo/checkpoint.pth",
          "output_dir": "output/demo/finetune", "train_subset": 8000, "epochs": 3, "warmup_epochs": 1,
          "batch_size": 128, "base_lr": 2e-3, "crop_padding": 2, "auto_augment": "", "reprob": 0.0,
          "mixup": 0.0, "cutmix": 0.0, "num_workers": 2, "log_freq": 5}
OFFICIAL: dict = {"lr_per_epoch": True}
