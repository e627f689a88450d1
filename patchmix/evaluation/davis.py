"""DAVIS-2017 data for the video segmentation protocol: the folder layout, indexed PNGs, and the J and F scores.

Layout (what the DAVIS download unpacks to, and what ``davis2017-evaluation`` reads)::

    DATA_PATH/JPEGImages/480p/<video>/00000.jpg ...     the frames
    DATA_PATH/Annotations/480p/<video>/00000.png ...    indexed (palette) PNGs: 0 background, 1..K objects
    DATA_PATH/ImageSets/2017/val.txt                    one video name per line

Predictions are written in the layout the official evaluation tool reads (``RESULTS/<video>/<frame>.png``,
indexed PNGs whose pixel values are object ids), so ``evaluation_method.py --task semi-supervised
--results_path RESULTS`` scores them.

The scores follow the official tool (``davis2017/metrics.py`` and ``davis2017/evaluation.py``), so that the
numbers printed here are the numbers it prints:

* J, region similarity: the IoU of one object's predicted and annotated masks in one frame, 1 when both are
  empty;
* F, boundary F-measure: precision and recall of the predicted boundary pixels against the annotated ones,
  where a boundary pixel counts as matched when a boundary pixel of the other mask lies within a disk of
  radius ``ceil(0.008 x image diagonal)`` (8 px at 854x480). Boundaries are the one-pixel maps of the DAVIS
  code (a pixel whose east, south or south-east neighbour differs), dilated by that disk: the same
  definition, computed with torch (exact: no approximation, tested against a brute-force distance check);
* semi-supervised task: the first frame (given) and the last frame are not scored; each object's J and F are
  the means over the other frames; the overall means are over all objects of all videos (not over videos);
  recall is the fraction of frames scoring above 0.5. The official "decay" statistic is not computed.
* object ids come from the first annotation; pixels of value 255 (DAVIS's "void") count as background, as in
  the official semi-supervised scoring (its loader zeroes them and it passes no void mask to J and F).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from patchmix.data import DataError

__all__ = ["DavisVideo", "davis_videos", "read_mask", "write_indexed_png", "davis_palette", "jaccard",
           "boundary_map", "dilate_disk", "boundary_tolerance", "f_measure", "score_video", "VOID",
           "LAYOUT_HELP", "write_synthetic_davis"]

VOID = 255
LAYOUT_HELP = ("expected the DAVIS-2017 layout: JPEGImages/480p/<video>/*.jpg, Annotations/480p/<video>/*.png "
               "(indexed PNGs) and ImageSets/2017/val.txt (get it from https://davischallenge.org/davis2017/"
               "code.html, 'TrainVal - Images and Annotations, 480p')")


# --------------------------------------------------------------------------------------------------------------
# The folder


@dataclass
class DavisVideo:
    """One video: its frames in order, the folder of its annotations, and the palette to write masks with."""

    name: str
    frames: list[Path]
    annotations: Path

    def annotation(self, frame: Path) -> Path:
        return self.annotations / (frame.stem + ".png")

    @property
    def first_annotation(self) -> Path:
        return self.annotation(self.frames[0])


def davis_videos(root: str | Path, split: str = "val", resolution: str = "480p",
                 only: tuple[str, ...] = ()) -> list[DavisVideo]:
    """The videos of ``ImageSets/2017/<split>.txt`` (or of ``only``), checked: frames and a first annotation.

    Every problem is a :class:`DataError` that names what is missing and the layout expected.
    """
    if not str(root):
        raise DataError(f"set --data-path to the DAVIS-2017 folder; {LAYOUT_HELP}.")
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    images, annotations = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    for needed in (root, listing, images, annotations):
        if not needed.exists():
            raise DataError(f"{needed} not found: {root} is not a DAVIS-2017 folder; {LAYOUT_HELP}.")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise DataError(f"--videos {' '.join(unknown)}: not in {listing} ({len(names)} videos).")
        names = [name for name in names if name in only]
    videos = []
    for name in names:
        frames = sorted((images / name).glob("*.jpg"))
        if not frames:
            raise DataError(f"no frames (*.jpg) in {images / name}; {LAYOUT_HELP}.")
        video = DavisVideo(name, frames, annotations / name)
        if not video.first_annotation.is_file():
            raise DataError(f"{video.first_annotation} not found: the first frame's annotation gives the objects "
                            f"to track; {LAYOUT_HELP}.")
        videos.append(video)
    if not videos:
        raise DataError(f"{listing} lists no videos.")
    return videos


# --------------------------------------------------------------------------------------------------------------
# Indexed PNGs


def davis_palette() -> np.ndarray:
    """The 256-colour palette of the DAVIS (and Pascal VOC) annotations: colour i spreads the bits of i over
    the high bits of R, G and B (0 black, 1 dark red, 2 dark green, ...). Only the indices are scored; the
    palette makes the files viewable."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = rgb
    return palette


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An indexed PNG as ``(ids uint8 HxW, palette 256x3 or None)``; other images are refused (their pixel
    values would not be object ids)."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as error:
        raise DataError(f"cannot read the annotation {path}: {error}.") from error
    if image.mode not in ("P", "L"):
        raise DataError(f"{path} is a {image.mode} image; DAVIS annotations are indexed (palette) PNGs whose "
                        f"pixel values are object ids.")
    palette = None
    if image.mode == "P" and image.getpalette():
        raw = np.asarray(image.getpalette(), dtype=np.uint8)
        palette = np.zeros(768, dtype=np.uint8)
        palette[: min(768, raw.size)] = raw[:768]
        palette = palette.reshape(256, 3)
    return np.asarray(image, dtype=np.uint8).copy(), palette


def write_indexed_png(path: Path, ids: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Save object ids as an indexed PNG (lossless: the official tool reads the indices back)."""
    if ids.ndim != 2:
        raise ValueError(f"an indexed PNG needs a 2-D array of ids, got shape {ids.shape}.")
    image = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8), mode="P")
    image.putpalette((davis_palette() if palette is None else palette).astype(np.uint8).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


# --------------------------------------------------------------------------------------------------------------
# J and F


def jaccard(annotation: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Region similarity of boolean masks ``(..., H, W)``: intersection over union, 1 where both are empty."""
    annotation, prediction = annotation.bool(), prediction.bool()
    inter = (annotation & prediction).sum(dim=(-2, -1)).double()
    union = (annotation | prediction).sum(dim=(-2, -1)).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary_map(mask: torch.Tensor) -> torch.Tensor:
    """One-pixel boundaries of boolean masks ``(..., H, W)``, as DAVIS defines them: a pixel is on the boundary
    when its east, south or south-east neighbour has the other value (neighbours beyond the image count as
    background, except that the last row compares only eastwards, the last column only southwards, and the
    bottom-right pixel is never a boundary). The boundary lies half a pixel towards the origin."""
    m = mask.bool()
    east, south, south_east = torch.zeros_like(m), torch.zeros_like(m), torch.zeros_like(m)
    east[..., :, :-1] = m[..., :, 1:]
    south[..., :-1, :] = m[..., 1:, :]
    south_east[..., :-1, :-1] = m[..., 1:, 1:]
    edges = (m ^ east) | (m ^ south) | (m ^ south_east)
    edges[..., -1, :] = m[..., -1, :] ^ east[..., -1, :]
    edges[..., :, -1] = m[..., :, -1] ^ south[..., :, -1]
    edges[..., -1, -1] = False
    return edges


def dilate_disk(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(N, H, W)`` masks by the disk ``dx^2 + dy^2 <= radius^2`` (skimage's ``disk``).

    The disk is a stack of horizontal segments, one per row offset ``dy`` (half-width ``isqrt(r^2 - dy^2)``):
    a 1-D max filter per segment, shifted by ``dy``, OR-ed together. 2r+1 cheap passes instead of a
    (2r+1)^2 convolution; pixels outside the image never contribute (as OpenCV's dilation).
    """
    if radius <= 0:
        return mask.bool()
    x = mask.float().unsqueeze(1)                                   # N, 1, H, W
    out = torch.zeros_like(x)
    height = x.shape[-2]
    for dy in range(-radius, radius + 1):
        if abs(dy) >= height:
            continue
        half = math.isqrt(radius * radius - dy * dy)
        rows = F.max_pool2d(x, kernel_size=(1, 2 * half + 1), stride=1, padding=(0, half)) if half else x
        if dy >= 0:   # out[y] |= rows[y + dy]
            out[..., : height - dy, :] = torch.maximum(out[..., : height - dy, :], rows[..., dy:, :])
        else:
            out[..., -dy:, :] = torch.maximum(out[..., -dy:, :], rows[..., : height + dy, :])
    return out.squeeze(1) > 0


def boundary_tolerance(height: int, width: int, bound_th: float = 0.008) -> int:
    """The matching radius in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th x diagonal)``."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(height, width)))


def f_measure(annotation: torch.Tensor, prediction: torch.Tensor, bound_th: float = 0.008,
              chunk: int = 16) -> torch.Tensor:
    """Boundary F-measure of boolean masks ``(N, H, W)`` (one value per mask pair), the DAVIS definition.

    Precision: the fraction of predicted boundary pixels with an annotated one within the tolerance; recall: the
    converse. No predicted boundary: precision 1 (recall 0 unless the annotation has none either); no annotated
    boundary: recall 1. F = 2PR / (P + R), 0 when both are 0. Masks are processed ``chunk`` at a time.
    """
    if annotation.ndim == 2:
        return f_measure(annotation[None], prediction[None], bound_th, chunk)[0]
    radius = boundary_tolerance(annotation.shape[-2], annotation.shape[-1], bound_th)
    scores = []
    for start in range(0, annotation.shape[0], chunk):
        gt = boundary_map(annotation[start:start + chunk])
        fg = boundary_map(prediction[start:start + chunk])
        n_gt, n_fg = gt.sum(dim=(-2, -1)).double(), fg.sum(dim=(-2, -1)).double()
        fg_matched = (fg & dilate_disk(gt, radius)).sum(dim=(-2, -1)).double()
        gt_matched = (gt & dilate_disk(fg, radius)).sum(dim=(-2, -1)).double()
        precision = torch.where(n_fg > 0, fg_matched / n_fg.clamp(min=1), torch.ones_like(n_fg))
        recall = torch.where(n_gt > 0, gt_matched / n_gt.clamp(min=1), torch.ones_like(n_gt))
        # An empty prediction against a non-empty annotation: P = 1, R = 0 (and the converse): the formulas
        # above already give that. Both empty: P = R = 1.
        total = precision + recall
        scores.append(torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12),
                                  torch.zeros_like(total)))
    return torch.cat(scores)


def score_video(annotations: list[np.ndarray], predictions: list[np.ndarray], num_objects: int,
                bound_th: float = 0.008, device: torch.device | str = "cpu") -> dict[int, dict[str, list[float]]]:
    """Per-object, per-frame J and F of the scored frames (all but the first and the last, as the official
    semi-supervised evaluation).

    ``annotations`` and ``predictions``: the id maps of every frame of the video, in order. Returns ``{object id:
    {"J": [...], "F": [...]}}`` for objects ``1..num_objects``. Void pixels (255) of the annotations count as
    background, as in the official loader.
    """
    if len(annotations) != len(predictions):
        raise ValueError(f"{len(annotations)} annotations but {len(predictions)} predictions.")
    if len(annotations) <= 2:
        return {obj: {"J": [], "F": []} for obj in range(1, num_objects + 1)}
    scored = slice(1, len(annotations) - 1)
    gt = torch.from_numpy(np.stack(annotations[scored])).to(device)
    pred = torch.from_numpy(np.stack(predictions[scored])).to(device)
    if gt.shape != pred.shape:
        raise ValueError(f"annotations of shape {tuple(gt.shape[1:])} but predictions of {tuple(pred.shape[1:])}.")
    result: dict[int, dict[str, list[float]]] = {}
    for obj in range(1, num_objects + 1):
        gt_obj, pred_obj = gt == obj, pred == obj
        result[obj] = {"J": jaccard(gt_obj, pred_obj).tolist(), "F": f_measure(gt_obj, pred_obj, bound_th).tolist()}
    return result


# --------------------------------------------------------------------------------------------------------------
# A synthetic folder (the demo and the tests)


def write_synthetic_davis(root: str | Path, frames: int = 5, size: int = 64, step: int = 3,
                          name: str = "shapes", seed: int = 0) -> Path:
    """A DAVIS-layout folder with one short video: a red square and a green disc moving ``step`` px per frame
    in opposite directions over a grey, slightly noisy background, with exact masks (square id 1, disc id 2).

    Small enough for a CPU test; the correct answer is known and a colour feature solves it.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    for t in range(frames):
        mask = np.zeros((size, size), dtype=np.uint8)
        side, top, left = size * 3 // 8, size // 8, size // 16 + t * step
        mask[top:top + side, left:left + side] = 1
        radius, cy, cx = size // 6, size * 2 // 3, size * 3 // 4 - t * step
        mask[(ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2] = 2
        image = np.empty((size, size, 3), dtype=np.float64)
        image[:] = (110, 110, 110)
        image[mask == 1] = (210, 40, 40)
        image[mask == 2] = (40, 190, 70)
        image += rng.normal(0, 4, image.shape)
        frame_dir = root / "JPEGImages" / "480p" / name
        frame_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(frame_dir / f"{t:05d}.jpg", quality=95)
        write_indexed_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", mask)
    listing = root / "ImageSets" / "2017"
    listing.mkdir(parents=True, exist_ok=True)
    (listing / "val.txt").write_text(name + "\n")
    return root
