"""Proof that main_video_segmentation.py writes the masks DINO's eval_video_segmentation.py writes, and that its J
and F are the official DAVIS tool's.

What it checks, on a synthetic 854x480 DAVIS-layout video (textured background, three moving shapes; DAVIS's
own frame size, so frames are resized to 832x480 and the position table resampled from 14x14 to 30x52):

* masks: the functions of the OFFICIAL ``eval_video_segmentation.py`` of github.com/facebookresearch/dino, run
  with a randomly initialised official ``vit_tiny`` (16-px patches), against ``main_video_segmentation.py``
  given the same weights as a plain state-dict file: the share of pixels whose object id differs must stay
  below ``MASK_TOLERANCE`` (the official decodes and resizes frames with OpenCV, we with Pillow and torch: up
  to one 8-bit level apart). With ``--pos-embed-interpolation timm`` the difference is reported for contrast;
* scores: the official tool (github.com/davisvideochallenge/davis2017-evaluation, ``DAVISEvaluation``) on both
  sets of masks against our results.json, and its ``db_eval_iou`` / ``db_eval_boundary`` against our
  ``jaccard`` / ``f_measure`` on random masks of 854x480 and odd sizes, at the default tolerance and at 3 px:
  equal to ``SCORE_TOLERANCE``.

It prints what it compared and exits with status 1 when a check fails.

How to run (needs opencv-python(-headless) and scikit-image for the official code; a CPU is enough, about a
minute)::

    git clone https://github.com/facebookresearch/dino /path/to/dino
    git clone https://github.com/davisvideochallenge/davis2017-evaluation /path/to/davis2017-evaluation
    python tools/parity/video_segmentation.py --dino /path/to/dino --davis-eval /path/to/davis2017-evaluation

Run-time patch (the checkouts are not modified): the official script moves tensors to the GPU with
``.cuda()``; ``torch.Tensor.cuda`` is replaced by the identity so that it runs on the CPU. Its module-level
``args`` (read by its ``restrict_neighborhood``) is set to its own defaults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from patchmix.evaluation.davis import davis_palette, f_measure, jaccard, write_indexed_png  # noqa: E402

MASK_TOLERANCE = 1e-4      # share of pixels allowed to differ from the official masks
SCORE_TOLERANCE = 1e-12


def synthetic_video(root: Path, frames: int, seed: int = 0) -> None:
    height, width = 480, 854
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    for t in range(frames):
        mask = np.zeros((height, width), np.uint8)
        mask[60:260, 80 + 9 * t:330 + 9 * t] = 1
        mask[(ys - 330) ** 2 + (xs - 600 + 11 * t) ** 2 <= 100 ** 2] = 2
        mask[(ys - 120) ** 2 / 50 ** 2 + (xs - 650 - 5 * t) ** 2 / 90 ** 2 <= 1] = 3
        image = np.empty((height, width, 3))
        image[:] = (105, 120, 110)
        image += 30 * (np.sin(xs / 37.0) * np.cos(ys / 23.0))[..., None]
        for obj, colour in ((1, (200, 50, 40)), (2, (40, 180, 80)), (3, (60, 70, 200))):
            image[mask == obj] = colour
        image += rng.normal(0, 6, image.shape)
        folder = root / "JPEGImages" / "480p" / "synth"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{t:05d}.jpg", quality=90)
        write_indexed_png(root / "Annotations" / "480p" / "synth" / f"{t:05d}.png", mask)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("synth\n")


def official_masks(dino: Path, root: Path, weights: Path, out: Path) -> None:
    sys.path.insert(0, str(dino))
    torch.Tensor.cuda = lambda self, *args, **kwargs: self      # run the official code on the CPU
    official = importlib.import_module("eval_video_segmentation")
    vits = importlib.import_module("vision_transformer")
    torch.manual_seed(0)
    model = vits.vit_tiny(patch_size=16, num_classes=0).eval()
    with torch.no_grad():
        model.pos_embed.normal_(0, 0.5)                          # a position table that matters
    torch.save(model.state_dict(), weights)
    args = argparse.Namespace(n_last_frames=7, size_mask_neighborhood=12, topk=5, patch_size=16, output_dir=str(out))
    official.args = args
    video = root / "JPEGImages" / "480p" / "synth"
    frames = official.read_frame_list(str(video))
    first_seg, seg_ori = official.read_seg(frames[0].replace("JPEGImages", "Annotations").replace("jpg", "png"), 16)
    official.eval_video_tracking_davis(args, model, frames, str(video), first_seg, seg_ori, davis_palette())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dino", required=True, type=Path, help="checkout of facebookresearch/dino")
    parser.add_argument("--davis-eval", required=True, type=Path, help="checkout of davis2017-evaluation")
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(args.davis_eval))
    from davis2017.evaluation import DAVISEvaluation
    from davis2017.metrics import db_eval_boundary, db_eval_iou

    import main_video_segmentation

    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        root, weights = work / "davis", work / "dino_vit_tiny.pth"
        synthetic_video(root, args.frames)
        official_masks(args.dino, root, weights, work / "dino")
        for mode in ("official", "timm"):
            status = main_video_segmentation.main([
                "--config", "davis_vit_small", "--data-path", str(root), "--pretrained-weights", str(weights),
                "--device", "cpu", "--num-workers", "0", "--output-dir", str(work / f"ours_{mode}"),
                "--pos-embed-interpolation", mode])
            if status:
                return status
        print("\nmasks (pixels whose id differs from the official masks, frames 1..):")
        for mode in ("official", "timm"):
            differ, total = 0, 0
            for t in range(1, args.frames):
                a = np.asarray(Image.open(work / "dino" / "synth" / f"{t:05d}.png"))
                b = np.asarray(Image.open(work / f"ours_{mode}" / "synth" / f"{t:05d}.png"))
                differ, total = differ + int((a != b).sum()), total + a.size
            share = differ / total
            checked = mode == "official"
            ok = share <= MASK_TOLERANCE or not checked
            print(f"  position table {mode:8s}: {differ} of {total} ({100 * share:.4f}%)"
                  + ("" if checked else "   (contrast, not checked)") + ("" if ok else "   FAIL"))
            if not ok:
                failures.append(f"masks ({mode})")

        print("\nscores of the official tool vs results.json:")
        for mode in ("official", "timm"):
            metrics = DAVISEvaluation(davis_root=str(root), task="semi-supervised", gt_set="val").evaluate(
                str(work / f"ours_{mode}"))
            tool = {"J-Mean": float(np.mean(metrics["J"]["M"])), "F-Mean": float(np.mean(metrics["F"]["M"])),
                    "J-Recall": float(np.mean(metrics["J"]["R"])), "F-Recall": float(np.mean(metrics["F"]["R"]))}
            ours = json.loads((work / f"ours_{mode}" / "results.json").read_text())
            gap = max(abs(tool[k] - ours[k]) for k in tool)
            ok = gap <= SCORE_TOLERANCE
            print(f"  our masks ({mode} position table): J&F {ours['J&F-Mean']:.6f}, largest difference between "
                  f"the tool's J/F means and recalls and ours {gap:.1e}" + ("" if ok else "   FAIL"))
            if not ok:
                failures.append(f"scores ({mode})")
        metrics = DAVISEvaluation(davis_root=str(root), task="semi-supervised", gt_set="val").evaluate(
            str(work / "dino"))
        print(f"  the official masks, scored by the tool: J&F "
              f"{(np.mean(metrics['J']['M']) + np.mean(metrics['F']['M'])) / 2:.6f}")

    print("\nJ and F on random masks vs db_eval_iou / db_eval_boundary:")
    rng = np.random.default_rng(0)
    worst = 0.0
    for height, width in ((480, 854), (119, 26), (34, 73), (136, 66)):
        coarse = torch.from_numpy(rng.random((8, 1, max(2, height // 40), max(2, width // 40)))).float()
        blobs = (F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0.55)
        gt, pred = blobs[:4].numpy(), blobs[4:].numpy().copy()
        pred[1], pred[2], pred[3] = gt[1], np.roll(gt[2], 5, axis=1), False
        worst = max(worst, float(np.abs(jaccard(torch.from_numpy(gt), torch.from_numpy(pred)).numpy()
                                        - db_eval_iou(gt, pred)).max()))
        for th in (0.008, 3):
            ours = f_measure(torch.from_numpy(gt), torch.from_numpy(pred), th).numpy()
            worst = max(worst, float(np.abs(ours - db_eval_boundary(gt.astype(np.uint8), pred.astype(np.uint8),
                                                                    bound_th=th)).max()))
    ok = worst <= SCORE_TOLERANCE
    print(f"  largest difference {worst:.1e}" + ("" if ok else "   FAIL"))
    if not ok:
        failures.append("J/F on random masks")
    print("\n" + ("FAILED: " + ", ".join(failures) if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
