"""DAVIS-2017 video object segmentation by label propagation through frozen patch features (DINO's protocol).

Nothing is trained. The first frame's annotation is given; every later frame takes, for each of its patches,
the labels of the patches most similar to it in a few earlier frames, weighted by similarity. How well the
objects are tracked measures how well the patch features of a frozen ViT correspond across time: a property of
dense, local features that the CLS-token protocols (kNN, linear probe) do not see.

For frame t (the defaults are the values of DINO's ``eval_video_segmentation.py``; the README lists the lines):

1. the frame is resized so that its shorter side is 480 px and its longer side keeps the aspect ratio,
   rounded down to a multiple of 64 (854x480 -> 832x480), normalised with the official mean and std;
2. its patch tokens are those of the last block after the final LayerNorm (what the official reads with
   ``get_intermediate_layers(n=1)``; a ViT without a final norm, such as SelfPatch's, gives its last block),
   without the CLS / register tokens, L2-normalised;
3. the context is the first frame (with its annotation) and the ``n_last_frames`` = 7 previous frames (with
   their *propagated soft labels*, kept at patch resolution);
4. a target patch may only look at source patches within ``size_mask_neighborhood`` = 12 patches of its own
   position (in rows and in columns); its affinity to each is ``exp(cosine / 0.1)``; only the ``topk`` = 5
   largest affinities over the whole context are kept (ties with the fifth are kept too), normalised to sum
   to 1, and the target's soft label is the weighted sum of the sources' labels;
5. to write the mask, the soft labels are upsampled by the patch size (bilinear), each object's map is
   rescaled to [0, 1] (min-max), the arg-max over objects (background included) gives the id, and the id map
   is resized to the frame's original size (nearest).

All of one frame's patches are propagated at once (one similarity matrix, no loop over patches).

Differences from the official code, all small: frames are decoded with Pillow instead of OpenCV and resized
with torch's bilinear interpolation rounded to 8 bits (as OpenCV's ``INTER_LINEAR`` on 8-bit images, up to
its fixed-point rounding); with ``pos_embed_interpolation="timm"`` the position table is resampled by timm
instead of DINO's formula (the default, "official", reproduces DINO's). A frame side that is not a multiple of
the patch size is cropped at the bottom/right, which is what the official patch convolution does implicitly.

The masks are written as indexed PNGs in the layout the official ``davis2017-evaluation`` tool reads, and J
and F are computed here as that tool does (:mod:`patchmix.evaluation.davis`). ``tools/parity/video_segmentation.py``
runs DINO's script and the DAVIS tool next to this code: on a synthetic 854x480 video with the same random ViT,
a few pixels in a million get another id, and the J and F means are equal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from patchmix.config import DATA, RUN, ConfigError, EvalConfig, configclass, option
from patchmix.data import DataError
from patchmix.distributed import DistInfo, barrier, is_distributed
from patchmix.engine import amp_dtype
from patchmix.evaluation.common import load_pretrained
from patchmix.evaluation.davis import (
    VOID,
    DavisVideo,
    davis_videos,
    read_mask,
    score_video,
    write_indexed_png,
    write_synthetic_davis,
)
from patchmix.evaluation.label_propagation import (
    first_frame_labels,
    labels_to_ids,
    neighbourhood,
    propagate,
    propagate_video,
)
from patchmix.rundir import prepare_run_dir, run_header, write_results
from patchmix.runlog import publish_results
from patchmix.weights import build_model

__all__ = ["VideoSegConfig", "PatchTokens", "frame_size", "load_frame", "first_frame_labels", "neighbourhood",
           "propagate", "propagate_video", "labels_to_ids", "segment_video", "summarise", "run_video_segmentation",
           "FRAME_MEAN", "FRAME_STD"]

VOS = "Video segmentation"
SCORING = "Scoring"

# The official frame normalisation (its color_normalize): ImageNet's mean, and its std with 0.228 for red (the
# usual value is 0.229; kept for fidelity).
FRAME_MEAN = (0.485, 0.456, 0.406)
FRAME_STD = (0.228, 0.224, 0.225)


@configclass
class VideoSegConfig(EvalConfig):
    """DAVIS-2017 semi-supervised video object segmentation by label propagation (DINO protocol)."""

    output_dir: str = RUN("output/video_segmentation", "directory for the predicted masks (OUTPUT_DIR/<video>/"
                          "<frame>.png, the official tool's --results_path), config.json and results.json",
                          run_only=True)
    amp: str = RUN("none", "mixed precision of the feature extraction (the official runs in float32; bf16/fp16 "
                   "change the features slightly)", choices=("auto", "bf16", "fp16", "none"))
    num_workers: int = RUN(4, "processes decoding the frames of a video", run_only=True, at_least=0)

    dataset: str = DATA("davis2017", "the DAVIS-2017 folder layout at DATA_PATH (JPEGImages/480p/<video>/*.jpg, "
                        "Annotations/480p/<video>/*.png, ImageSets/2017/<split>.txt)", choices=("davis2017",))
    data_path: str = DATA("", "the DAVIS-2017 folder (the one that holds JPEGImages, Annotations, ImageSets)",
                          run_only=True)
    batch_size: int = DATA(8, "frames per forward pass of the ViT (per process; only the feature extraction is "
                           "batched, the propagation goes frame by frame)", at_least=1)
    test_subset: int = DATA(0, "evaluate only the first N videos of the split (0 = all)", at_least=0)
    split: str = DATA("val", "the video list ImageSets/2017/<SPLIT>.txt (val: the 30 videos of the benchmark)")
    resolution: str = DATA("480p", "the frame and annotation folders JPEGImages/<RES> and Annotations/<RES>")
    videos: tuple[str, ...] = DATA((), "evaluate only these videos of the split (default: all)")
    # Fields of every evaluation that have no meaning here (refused when set).
    download: bool = DATA(False, "not used: DAVIS is not downloaded by this script (see --help)", run_only=True)
    train_subset: int = DATA(0, "not used by video segmentation", at_least=0)
    img_size: int = DATA(0, "not used: frames keep their aspect ratio, see --short-side", at_least=0)
    crop_pct: float = DATA(0.0, "not used: frames are not cropped, see --short-side", at_least=0, at_most=1)

    short_side: int = option(480, "resize every frame so that its shorter side has this many pixels (official "
                             "480, DAVIS's own 480p)", group=VOS, at_least=1)
    long_side_multiple: int = option(64, "round the longer side (aspect ratio kept) down to a multiple of this "
                                     "(official 64: 854 -> 832)", group=VOS, at_least=1)
    n_last_frames: int = option(7, "previous frames in the context, besides the first frame (official 7)",
                                group=VOS, at_least=0)
    size_mask_neighborhood: int = option(12, "a target patch only looks at source patches at most this many "
                                         "patches away in rows and in columns (official 12; 0 = everywhere)",
                                         group=VOS, at_least=0)
    topk: int = option(5, "keep the K largest affinities of a target patch over the whole context (official "
                       "5)", group=VOS, at_least=1)
    temperature: float = option(0.1, "T of the affinities exp(cosine / T) (official 0.1)", group=VOS, above=0)
    pos_embed_interpolation: str = option("official", "how the position table is resized to the frame's patch "
                                          "grid: official (DINO's bicubic with its +0.1 scale factor) or timm "
                                          "(timm's resampling)", group=VOS, choices=("official", "timm"))
    synthetic: bool = option(False, "the demo: if DATA_PATH holds nothing yet, first write a small synthetic "
                             "DAVIS-layout video there (two coloured shapes moving over 8 frames of 64x64 px)",
                             group=VOS, run_only=True)
    score_only: bool = option(False, "load no model: score the masks already in OUTPUT_DIR (e.g. written by "
                              "another code) against the annotations", group=VOS)

    bound_th: float = option(0.008, "F's boundary tolerance: a fraction of the image diagonal (DAVIS 0.008), or "
                             "pixels when >= 1", group=SCORING, above=0)


# --------------------------------------------------------------------------------------------------------------
# Frames


def frame_size(height: int, width: int, short_side: int = 480, multiple: int = 64) -> tuple[int, int]:
    """The official input size: the shorter side becomes ``short_side``, the longer keeps the aspect ratio,
    rounded down to a multiple of ``multiple`` (480p DAVIS: 480x854 -> 480x832)."""
    if height > width:
        return int((short_side * height / width) // multiple * multiple), short_side
    return short_side, int((short_side * width / height) // multiple * multiple)


def load_frame(path: Path, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """A frame as the ViT sees it: ``(3, H, W)`` resized to ``size`` (bilinear, 8-bit as OpenCV's), scaled to
    [0, 1], normalised; cropped at the bottom/right to whole patches."""
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    x = pixels.permute(2, 0, 1).unsqueeze(0).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = x[0] / 255.0
    x = (x - torch.tensor(FRAME_MEAN).view(3, 1, 1)) / torch.tensor(FRAME_STD).view(3, 1, 1)
    rows, cols = size[0] // patch_size * patch_size, size[1] // patch_size * patch_size
    return x[:, :rows, :cols].contiguous()


class _Frames(Dataset):
    def __init__(self, paths: list[Path], size: tuple[int, int], patch_size: int) -> None:
        self.paths, self.size, self.patch_size = paths, size, patch_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_frame(self.paths[index], self.size, self.patch_size)


# --------------------------------------------------------------------------------------------------------------
# Features


class PatchTokens:
    """``images (B, 3, H, W) -> (B, H/p, W/p, D)``: the patch tokens of a timm ViT's last block after its final
    norm (``forward_features``), its ``num_prefix_tokens`` leading tokens (CLS, registers) dropped.

    A ViT without a CLS token (SelfPatch's backbone) has no prefix token and works unchanged; one without a
    final norm (``norm = Identity``) gives its last block, which is what SelfPatch's own evaluation reads.

    ``pos_embed="official"`` resizes the position table for a grid other than the one it was trained at with
    DINO's formula (bicubic, scale factor ``(n + 0.1) / N`` per side, no antialiasing), by lending the model
    that table for the call; ``"timm"`` leaves it to timm (bicubic to the exact size, antialiased), which
    differs slightly. At the training grid both use the table as it is.
    """

    def __init__(self, model: nn.Module, pos_embed: str = "official") -> None:
        if pos_embed not in ("official", "timm"):
            raise ValueError(f"pos_embed must be official or timm, got {pos_embed!r}.")
        self.model, self.mode = model, pos_embed
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    def _official_table(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid not in self._tables:
            table = self.model.pos_embed
            lead = 0 if getattr(self.model, "no_embed_class", False) else self.prefix
            head, patches = table[:, :lead], table[:, lead:]
            side, dim = int(round(patches.shape[1] ** 0.5)), patches.shape[-1]
            square = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
            scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
            resized = F.interpolate(square, scale_factor=scale, mode="bicubic", align_corners=False)
            if tuple(resized.shape[-2:]) != grid:
                raise RuntimeError(f"position table resized to {tuple(resized.shape[-2:])}, expected {grid}.")
            resized = resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(table.dtype)
            self._tables[grid] = torch.cat([head, resized], dim=1).detach()
        return self._tables[grid]

    @contextlib.contextmanager
    def _grid(self, grid: tuple[int, int]) -> Iterator[None]:
        model = self.model
        native = tuple(model.patch_embed.grid_size)
        if self.mode == "timm" or getattr(model, "pos_embed", None) is None or grid == native:
            yield
            return
        table, saved = self._official_table(grid), model.pos_embed
        try:
            # timm resamples the table only when the grid differs from patch_embed.grid_size.
            model.pos_embed = nn.Parameter(table, requires_grad=False)
            model.patch_embed.grid_size = grid
            yield
        finally:
            model.pos_embed = saved
            model.patch_embed.grid_size = native

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        with self._grid(grid):
            tokens = self.model.forward_features(images)
        tokens = tokens[:, self.prefix:]
        if tokens.shape[1] != grid[0] * grid[1]:
            raise RuntimeError(f"expected {grid[0] * grid[1]} patch tokens, got {tokens.shape[1]}.")
        return tokens.reshape(images.shape[0], grid[0], grid[1], -1)


def segment_video(video: DavisVideo, extract: Callable[[torch.Tensor], torch.Tensor], patch_size: int,
                  cfg: VideoSegConfig, device: torch.device | str = "cpu",
                  amp: torch.dtype | None = None) -> tuple[list[np.ndarray], np.ndarray | None, int]:
    """Segment every frame of ``video`` from its first annotation.

    ``extract`` maps normalised frames ``(B, 3, H, W)`` to patch features ``(B, H/p, W/p, D)`` (a
    :class:`PatchTokens`, or any function: the tests pass hand-made ones). Returns the id maps of all frames
    (the first is the given annotation), the annotation's palette, and the number of objects.
    """
    device = torch.device(device)
    first_ids, palette = read_mask(video.first_annotation)
    num_objects = int(first_ids[first_ids != VOID].max(initial=0))
    with Image.open(video.frames[0]) as image:
        width, height = image.size
    if first_ids.shape != (height, width):
        raise DataError(f"{video.first_annotation} is {first_ids.shape[1]}x{first_ids.shape[0]} but the frames of "
                        f"{video.name} are {width}x{height}.")
    size = frame_size(height, width, cfg.short_side, cfg.long_side_multiple)
    grid = (size[0] // patch_size, size[1] // patch_size)
    if min(grid) < 1:
        raise ConfigError(f"frames of {size[1]}x{size[0]} px hold no {patch_size}-px patch; raise --short-side.")
    loader = DataLoader(_Frames(video.frames, size, patch_size), batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")

    def features() -> Iterator[torch.Tensor]:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                tokens = extract(batch)
            yield from F.normalize(tokens.float(), dim=-1)

    labels0 = first_frame_labels(first_ids, grid, num_objects).to(device)
    predictions = [first_ids]
    for soft in propagate_video(features(), labels0, cfg.n_last_frames, cfg.size_mask_neighborhood, cfg.topk,
                                cfg.temperature):
        predictions.append(labels_to_ids(soft, patch_size, (height, width)))
    return predictions, palette, num_objects


# --------------------------------------------------------------------------------------------------------------
# Scores


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(per_object: dict[int, dict[str, list[float]]]) -> dict[str, Any]:
    """A video's scores: each object's mean and recall (fraction > 0.5) of J and F over the scored frames, and
    the video's means over its objects."""
    objects = {}
    for obj, scores in per_object.items():
        objects[str(obj)] = {"J-Mean": _mean(scores["J"]), "J-Recall": _mean([float(j > 0.5) for j in scores["J"]]),
                             "F-Mean": _mean(scores["F"]), "F-Recall": _mean([float(f > 0.5) for f in scores["F"]]),
                             "frames": len(scores["J"])}
    j = _mean([o["J-Mean"] for o in objects.values()])
    f = _mean([o["F-Mean"] for o in objects.values()])
    return {"J&F-Mean": (j + f) / 2, "J-Mean": j, "F-Mean": f, "objects": objects}


def _overall(videos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over all scored objects of all videos (the official tool averages objects, not videos)."""
    objects = [o for v in videos.values() if "objects" in v for o in v["objects"].values() if o["frames"]]
    out: dict[str, Any] = {}
    for key in ("J-Mean", "J-Recall", "F-Mean", "F-Recall"):
        out[key] = _mean([o[key] for o in objects])
    out = {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out, "objects": len(objects),
           "scored_object_frames": int(sum(o["frames"] for o in objects))}
    return out


def _annotations(video: DavisVideo) -> list[np.ndarray] | None:
    paths = [video.annotation(frame) for frame in video.frames]
    if not all(p.is_file() for p in paths):
        return None  # e.g. test-dev: only the first frame is annotated
    return [read_mask(p)[0] for p in paths]


def _read_predictions(video: DavisVideo, folder: Path) -> list[np.ndarray]:
    predictions = []
    for frame in video.frames:
        path = folder / video.name / f"{frame.stem}.png"
        if not path.is_file():
            raise DataError(f"--score-only: {path} not found; the masks must be indexed PNGs named like the frames "
                            f"in OUTPUT_DIR/<video>/ (as the official tool reads them).")
        predictions.append(read_mask(path)[0])
    return predictions


def _check_unused(cfg: VideoSegConfig) -> None:
    unused = {"img_size": 0, "crop_pct": 0.0, "train_subset": 0, "download": False}
    for key, default in unused.items():
        if getattr(cfg, key) != default:
            hint = ("DAVIS must be downloaded by hand: https://davischallenge.org/davis2017/code.html"
                    if key == "download" else "frames keep their aspect ratio; set --short-side instead")
            raise ConfigError(f"--{key.replace('_', '-')} is not used by video segmentation ({hint}).")


def _gather(local: dict[str, Any], world_size: int) -> dict[str, Any]:
    if not is_distributed() or world_size == 1:
        return local
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def _fmt(value: float) -> str:
    return "   -  " if value != value else f"{100 * value:6.1f}"


def run_video_segmentation(cfg: VideoSegConfig, env: DistInfo) -> dict[str, Any]:
    """Segment the videos of the split (each process a share), write the masks and ``results.json``; return
    the results (on the main process)."""
    _check_unused(cfg)
    if cfg.synthetic and cfg.data_path and not Path(cfg.data_path, "ImageSets").exists():
        if env.is_main:
            write_synthetic_davis(cfg.data_path, frames=8, size=64)
            print(f"wrote a synthetic DAVIS-layout video to {cfg.data_path}")
        barrier()
    videos = davis_videos(cfg.data_path, cfg.split, cfg.resolution, cfg.videos)
    if cfg.test_subset:
        videos = videos[: cfg.test_subset]
    output_dir, _ = prepare_run_dir(cfg, env.is_main, resumable=False)
    if env.is_main:
        print(run_header(cfg, env))
    weights_info: dict[str, Any] = {}
    extract: PatchTokens | None = None
    if not cfg.score_only:
        loaded = load_pretrained(cfg, env)
        weights_info = loaded.summary()
        model = build_model(loaded).to(env.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        extract = PatchTokens(model, cfg.pos_embed_interpolation)
    amp = amp_dtype(cfg.amp, env.device)

    local: dict[str, Any] = {}
    mine = videos[env.rank::env.world_size]
    for index, video in enumerate(mine):
        start = time.time()
        if extract is None:
            predictions = _read_predictions(video, output_dir)
            first = read_mask(video.first_annotation)[0]
            num_objects = int(first[first != VOID].max(initial=0))
        else:
            with torch.no_grad():
                predictions, palette, num_objects = segment_video(video, extract, extract.patch_size, cfg,
                                                                  env.device, amp)
            for frame, ids in zip(video.frames, predictions):
                write_indexed_png(output_dir / video.name / f"{frame.stem}.png", ids, palette)
        annotations = _annotations(video)
        if annotations is None:
            local[video.name] = {"frames": len(video.frames), "scored": False}
        else:
            scores = score_video(annotations, predictions, num_objects, cfg.bound_th, env.device)
            local[video.name] = {**summarise(scores), "frames": len(video.frames), "scored": True}
        result = local[video.name]
        score = (f"J&F {_fmt(result['J&F-Mean'])}  J {_fmt(result['J-Mean'])}  F {_fmt(result['F-Mean'])}"
                 if result["scored"] else "no annotations beyond the first frame: not scored")
        where = f"rank {env.rank} " if env.world_size > 1 else ""
        print(f"{where}[{index + 1}/{len(mine)}] {video.name}: {len(video.frames)} frames, {num_objects} object(s), "
              f"{time.time() - start:.1f}s  {score}", flush=True)

    per_video = _gather(local, env.world_size)
    results: dict[str, Any] = {}
    if env.is_main:
        per_video = {video.name: per_video[video.name] for video in videos}
        overall = _overall(per_video)
        results = {"protocol": "DAVIS-2017 semi-supervised video object segmentation, label propagation of "
                               "frozen patch features (DINO)",
                   **{k: overall[k] for k in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall")},
                   "scale": "fractions in [0, 1], as the official tool's CSV (papers report them x 100)",
                   "split": cfg.split, "videos_evaluated": len(videos), "objects": overall["objects"],
                   "scored_object_frames": overall["scored_object_frames"], "masks": str(output_dir),
                   "settings": {k: getattr(cfg, k) for k in (
                       "short_side", "long_side_multiple", "n_last_frames", "size_mask_neighborhood", "topk",
                       "temperature", "pos_embed_interpolation", "bound_th", "amp", "score_only")},
                   "videos": per_video, "weights": weights_info, "preset": cfg.preset}
        write_results(output_dir, results)
        print(f"\nDAVIS-2017 {cfg.split}, {len(videos)} video(s), {overall['objects']} object(s) (x 100):")
        print(f"  {'video':24s} {'J&F':>6s} {'J':>6s} {'F':>6s}")
        for name, result in per_video.items():
            if result["scored"]:
                print(f"  {name:24s} {_fmt(result['J&F-Mean'])} {_fmt(result['J-Mean'])} {_fmt(result['F-Mean'])}")
        print(f"  {'mean over objects':24s} {_fmt(results['J&F-Mean'])} {_fmt(results['J-Mean'])} "
              f"{_fmt(results['F-Mean'])}")
        print(f"masks: {output_dir}/<video>/*.png; results: {output_dir / 'results.json'}")
    publish_results(cfg, output_dir, results, env.is_main, "video_segmentation")
    barrier()
    return results
