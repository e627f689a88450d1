"""Self-supervised pretraining of a ViT: PatchMix (MoCo v3 with --num-mix 1) and the methods of patchmix/methods/.

With no arguments this runs a CPU-friendly demo (a small ViT on Fashion-MNIST, a few minutes on a laptop) that
ends by printing the weighted-kNN accuracy of the learned features next to that of a random encoder. Any other
command names a recipe of config/pretrain/ (or the path of your own) with --config.

Examples:
  python main_pretrain.py                                     # the demo
  python main_pretrain.py --config cifar10_vit_small --data-path data --download --output-dir out/c10_s
  torchrun --nproc_per_node=8 main_pretrain.py --config imagenet_vit_small --data-path /data/imagenet \\
      --output-dir out/in1k_s
  python main_pretrain.py --config cifar100_vit_tiny --preset official   # the authors' released settings
  python main_pretrain.py --config cifar10_vit_small --num-mix 1          # MoCo v3

Re-running a command with the same --output-dir resumes from OUTPUT_DIR/checkpoint.pth; SIGTERM or SIGUSR1
(cluster pre-emption) saves the exact position at the next step and exits 0. Every config field below can be
set on the command line; --method METHOD --help lists another method's options.
"""

from __future__ import annotations

import sys

from patchmix.cli import run_script
from patchmix.methods import get_method
from patchmix.pretrain import run_pretraining


def main(argv: list[str] | None = None) -> int:
    return run_script(lambda values: get_method(values.get("method", "patchmix")).config_class, argv,
                      "pretrain", __doc__, run_pretraining)


if __name__ == "__main__":
    sys.exit(main())
