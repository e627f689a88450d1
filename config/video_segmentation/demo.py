"""CPU demo: propagate the masks of a synthetic 8-frame video (two coloured shapes moving over 64x64 px,
written to output/demo/davis_synthetic on first use) through the demo pretraining run's checkpoint
(python main_pretrain.py), in a few seconds.

The demo ViT saw 28-px grey Fashion-MNIST images: this only shows the protocol end to end, its score says little.
Frames keep their 64-px size (the 7-px patches give a 9x9 grid; the last pixel row and column are cropped).
"""

from ._shared import DAVIS

CONFIG = {**DAVIS, "pretrained_weights": "output/demo/checkpoint.pth", "data_path": "output/demo/davis_synthetic",
          "synthetic": True, "short_side": 64, "output_dir": "output/demo/video_segmentation", "num_workers": 0}
OFFICIAL: dict = {}
