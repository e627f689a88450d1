"""CPU demo: kNN of the demo pretraining run (python main_pretrain.py) on Fashion-MNIST, in about a minute.

The architecture and the 28-px resolution are read from the checkpoint. Pass --pretrained-weights to
evaluate another run.
"""

CONFIG = {"dataset": "fashion_mnist", "pretrained_weights": "output/demo/checkpoint.pth",
          "output_dir": "output/demo/knn", "batch_size": 256, "num_workers": 2}
OFFICIAL: dict = {}
