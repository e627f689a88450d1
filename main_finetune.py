"""Fine-tuning of pretrained PatchMix weights: every layer trained with the official timm recipe.

Defaults are the official protocol: AdamW (weight decay 0.05; none on biases, norms, pos_embed, cls_token),
layer-wise lr decay 0.75 (timm param_groups_layer_decay), drop path 0.1, lr = BASE_LR x BATCH_SIZE / 256
(BASE_LR: ViT-T 1e-3, ViT-S 5e-4, ViT-B 5e-4), 10 warm-up epochs from 1e-6 then cosine to 1e-5 over 100
epochs; timm create_transform with RandAugment rand-m9-mstd0.5-inc1 and RandomErasing 0.25 (CIFAR configs:
RandomCrop(32, padding 4) instead of RandomResizedCrop), Mixup 0.8 / CutMix 1.0 (switch 0.5) with label
smoothing 0.1 and SoftTargetCrossEntropy. --model-ema keeps a timm ModelEmaV3 of the weights that is
evaluated and saved (the official code updated one but never used it).

The test set is evaluated after every epoch. results.json reports the LAST epoch as the headline and the best
epoch next to it (the official code reports the best epoch: a model selected on the test set).

With no arguments this fine-tunes the CPU demo's checkpoint (output/demo/checkpoint.pth of `python
main_pretrain.py`) on a Fashion-MNIST subset in a few minutes.

Examples:
  python main_finetune.py                                          # the demo
  python main_finetune.py --config cifar10_vit_small --data-path data --pretrained-weights out/c10_s/checkpoint.pth
  python main_finetune.py --config cifar10_vit_tiny --data-path data  # released ViT-T/2 weights (paper: 97.5)
  torchrun --nproc_per_node=8 main_finetune.py --config imagenet_vit_small --data-path /data/imagenet
  python main_finetune.py --config imagenet_vit_small --data-path /data/imagenet --eval-only \\
      --pretrained-weights imagenet-vit-small-finetune             # evaluate the released fine-tuned model

Re-running a command with the same --output-dir resumes from OUTPUT_DIR/checkpoint.pth; launch with torchrun
for several GPUs; --amp chooses bf16 / fp16 / none autocast like pretraining.
"""

from __future__ import annotations

import sys

from patchmix.cli import run_script
from patchmix.evaluation.classifier import run_classifier
from patchmix.evaluation.finetune import Finetune, FinetuneConfig


def main(argv: list[str] | None = None) -> int:
    return run_script(FinetuneConfig, argv, "finetune", __doc__, lambda cfg, env: run_classifier(cfg, env, Finetune))


if __name__ == "__main__":
    sys.exit(main())
