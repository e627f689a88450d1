"""Shared pieces of the video segmentation recipes: DINO's DAVIS-2017 protocol (its eval_video_segmentation.py).

Every value below is also the default of ``patchmix.evaluation.video_segmentation.VideoSegConfig``; they are
spelled out here so that a recipe shows the protocol it runs:

* frames resized to a 480-px shorter side, the longer one rounded down to a multiple of 64 (854x480 -> 832x480);
* context: the first frame (annotated) and the 7 previous frames (their propagated labels);
* a target patch looks at source patches within 12 patches (rows and columns), keeps its 5 largest affinities
  exp(cosine / 0.1) over the whole context;
* F's boundary tolerance: 0.008 of the image diagonal (the DAVIS benchmark's).

The data: ``--data-path`` the DAVIS-2017 folder (JPEGImages/480p, Annotations/480p, ImageSets/2017/val.txt;
https://davischallenge.org/davis2017/code.html, "TrainVal - Images and Annotations, 480p").
"""

DAVIS = {"dataset": "davis2017", "split": "val", "resolution": "480p", "short_side": 480,
         "long_side_multiple": 64, "n_last_frames": 7, "size_mask_neighborhood": 12, "topk": 5,
         "temperature": 0.1, "pos_embed_interpolation": "official", "bound_th": 0.008, "amp": "none",
         "batch_size": 8, "num_workers": 4}
DAVIS_OFFICIAL: dict = {}  # the defaults are the official code's values already
