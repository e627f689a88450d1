"""Weighted k-nearest-neighbour evaluation of pretrained PatchMix features (the DINO protocol).

The feature of an image is the CLS token after the final LayerNorm of the chosen encoder (the momentum
encoder by default; checkpoints without one fall back to the online encoder). No learnable parameter is
involved: train and test features are L2-normalised, each test image takes the k most cosine-similar training
images, each votes for its label with weight exp(similarity / 0.07), and the class with the largest vote wins.
Top-1 and top-5 are printed for k = 10, 20, 100, 200; k = 20 is the headline (results.json, "top1").

With no arguments this evaluates the CPU demo's checkpoint (output/demo/checkpoint.pth of `python
main_pretrain.py`) on Fashion-MNIST.

Examples:
  python main_knn.py                                               # the demo
  python main_knn.py --pretrained-weights output/c10_s/checkpoint.pth --config cifar10_vit_small --data-path data
  python main_knn.py --config cifar10_vit_tiny --data-path data    # the released ViT-T/2 weights (paper: 92.9)
  torchrun --nproc_per_node=8 main_knn.py --config imagenet_vit_small --data-path /data/imagenet
  python main_knn.py ... --dump-features out/feats.pth             # later: --load-features out/feats.pth

--pretrained-weights takes a checkpoint (ours at any stage, or an official file), a URL, or a released name
(`python -m patchmix.weights list`). The architecture, patch size and resolution are read from the weights.
The official code's kNN applied a randomly initialised 1000-d linear layer to the CLS token (a bug); this
script does not reproduce it, under either preset.
Features are computed in float32 like the official kNN; --amp auto / bf16 / fp16 opts in to autocast.
"""

from __future__ import annotations

import sys

from patchmix.cli import run_script
from patchmix.evaluation.knn import KnnConfig, run_knn


def main(argv: list[str] | None = None) -> int:
    return run_script(KnnConfig, argv, "knn", __doc__, run_knn)


if __name__ == "__main__":
    sys.exit(main())
