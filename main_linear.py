"""Linear probe of pretrained PatchMix features: a linear classifier on the frozen CLS token.

The backbone (the momentum encoder of a pretraining checkpoint by default) is frozen and kept in eval mode;
its CLS token after the final LayerNorm is computed without gradient and fed to a new linear layer, the only
thing trained. Defaults are the official protocol: SGD with Nesterov momentum 0.9 and no weight decay,
lr = BASE_LR x BATCH_SIZE / 256 (BASE_LR: ViT-T 0.05, ViT-S 0.02, ViT-B 0.01), cosine to 0 over 100 epochs,
RandomResizedCrop(0.08-1, bicubic) + flip. --batchnorm adds a BatchNorm1d without affine before the classifier
(the MAE / MoCo v3 probe).

The test set is evaluated after every epoch. results.json reports the LAST epoch as the headline and the best
epoch next to it: the official code reports the best epoch, i.e. a model selected on the test set. At the end
the frozen backbone is compared with the pretrained weights (MoCo v3's sanity check).

With no arguments this probes the CPU demo's checkpoint (output/demo/checkpoint.pth of `python
main_pretrain.py`) on Fashion-MNIST in a few minutes.

Examples:
  python main_linear.py                                            # the demo
  python main_linear.py --config demo --pretrained-weights output/run/checkpoint.pth --epochs 3
  python main_linear.py --config cifar10_vit_small --data-path data --pretrained-weights out/c10_s/checkpoint.pth
  python main_linear.py --config cifar100_vit_tiny --data-path data   # released ViT-T/2 weights (paper: 74.7)
  torchrun --nproc_per_node=8 main_linear.py --config imagenet_vit_small --data-path /data/imagenet
  python main_linear.py --config cifar10_vit_tiny --data-path data --eval-only \\
      --pretrained-weights cifar10-vit-tiny-linear                 # evaluate the released linear classifier

Re-running a command with the same --output-dir resumes from OUTPUT_DIR/checkpoint.pth; SIGTERM or
SIGUSR1 saves the exact position at the next step and exits 0.
"""

from __future__ import annotations

import sys

from patchmix.cli import run_script
from patchmix.evaluation.classifier import run_classifier
from patchmix.evaluation.linear import LinearConfig, LinearProbe


def main(argv: list[str] | None = None) -> int:
    return run_script(LinearConfig, argv, "linear", __doc__, lambda cfg, env: run_classifier(cfg, env, LinearProbe))


if __name__ == "__main__":
    sys.exit(main())
