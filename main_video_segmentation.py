"""DAVIS-2017 video object segmentation by label propagation through frozen patch features (DINO's protocol).

What it measures: whether the patch tokens of a frozen ViT find the same object parts again from frame to frame.
Nothing is trained. The first frame's annotation is given; each later frame's patches take the labels of their
5 most similar patches (cosine of the last block's L2-normalised patch tokens, weights exp(cos / 0.1)) among the
first frame and the 7 previous frames, within 12 patches of their own position. The masks are scored with the
DAVIS measures: J (region similarity: mean IoU per object) and F (boundary F-measure, tolerance 0.008 of the
image diagonal), averaged over the objects of all videos; J&F is their mean. Frames are resized to a 480-px
shorter side (854x480 -> 832x480), as the official code does.

The data (--data-path, from https://davischallenge.org/davis2017/code.html, "TrainVal - Images and
Annotations, 480p"):
  DATA_PATH/JPEGImages/480p/<video>/00000.jpg ...     the frames
  DATA_PATH/Annotations/480p/<video>/00000.png ...    indexed PNGs: 0 background, 1..K the objects
  DATA_PATH/ImageSets/2017/val.txt                    the 30 validation videos

The output (--output-dir): <video>/<frame>.png, the predicted masks as indexed PNGs in the layout of the
official evaluation, plus results.json (J&F, J, F and their recalls overall, per video and per object, as
fractions like the official CSV) and config.json. The official tool scores the same masks:
  git clone https://github.com/davisvideochallenge/davis2017-evaluation
  python davis2017-evaluation/evaluation_method.py --task semi-supervised --davis_path DATA_PATH \\
      --results_path OUTPUT_DIR
(its J and F are the ones computed here; do not leave files named global_results-val.csv in OUTPUT_DIR, the tool
would print them instead of evaluating). --score-only scores masks already in OUTPUT_DIR without a model.

With no arguments this runs the CPU demo: a synthetic 8-frame video through the demo pretraining run's
checkpoint (output/demo/checkpoint.pth of `python main_pretrain.py`).

Examples:
  python main_video_segmentation.py                                          # the demo
  python main_video_segmentation.py --config davis_vit_small --data-path ~/davis-2017/DAVIS
  python main_video_segmentation.py --config davis_vit_small --data-path DAVIS --pretrained-weights run/checkpoint.pth
  python main_video_segmentation.py --config davis_vit_small --data-path DAVIS --videos bike-packing dogs-jump
  torchrun --nproc_per_node=4 main_video_segmentation.py --config davis_vit_base --data-path DAVIS  # videos shared

--pretrained-weights takes any checkpoint the other protocols take (ours, official files, released names:
`python -m patchmix.weights list`); the architecture and patch size are read from the weights. Besides the
model, memory goes to the similarity matrix of one frame against its 8 context frames, 8 x (patches per frame)^2
floats: 78 MB with 16-px patches at 480p (30 x 52 patches), 1.2 GB with 8-px patches.
"""

from __future__ import annotations

import sys

from patchmix.cli import run_script
from patchmix.evaluation.video_segmentation import VideoSegConfig, run_video_segmentation


def main(argv: list[str] | None = None) -> int:
    return run_script(VideoSegConfig, argv, "video_segmentation", __doc__, run_video_segmentation)


if __name__ == "__main__":
    sys.exit(main())
