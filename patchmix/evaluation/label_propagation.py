"""Label propagation through patch features: the algorithm of DINO's video object segmentation protocol.

Frame 0's annotation, at patch resolution, is carried forward frame by frame: each patch of a new frame takes
the labels of the context patches most similar to it (frame 0 and the last few frames, within a square
neighbourhood of its position), weighted by ``exp(cosine / T)`` over the ``topk`` largest. All patches of a
frame are propagated at once. The harness around it (frames, features, masks, J and F) is
:mod:`patchmix.evaluation.video_segmentation`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from patchmix.evaluation.davis import VOID

__all__ = ["first_frame_labels", "neighbourhood", "propagate", "propagate_video", "labels_to_ids"]


def first_frame_labels(ids: np.ndarray, grid: tuple[int, int], num_objects: int) -> torch.Tensor:
    """The given annotation at patch resolution: ``(h, w, K+1)`` one-hot (background, objects 1..K), resized
    with nearest neighbour by Pillow (as the official); void (255) is background."""
    small = np.asarray(Image.fromarray(ids).resize((grid[1], grid[0]), Image.NEAREST)).astype(np.int64)
    small[(small == VOID) | (small > num_objects)] = 0
    return F.one_hot(torch.from_numpy(small), num_objects + 1).float()


def neighbourhood(grid: tuple[int, int], radius: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``(h*w, h*w)`` booleans: target patch i may look at source patch j when their rows and their columns
    each differ by at most ``radius`` (a square window; None for ``radius`` 0 = no restriction)."""
    if radius <= 0:
        return None
    rows = torch.arange(grid[0], device=device).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=device).repeat(grid[0])
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)


def propagate(target: torch.Tensor, sources: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor | None,
              topk: int, temperature: float) -> torch.Tensor:
    """Soft labels of the target patches from the context, all patches at once.

    Args:
        target: ``(N, D)`` L2-normalised features of the target frame.
        sources: ``(C, N, D)`` L2-normalised features of the C context frames.
        labels: ``(C, N, K)`` their (soft) labels.
        allowed: ``(N, N)`` which source positions each target position may use, or None.

    The affinity of target i to source (c, j) is ``exp(<f_i, f_cj> / T)``, 0 outside ``allowed``; per target,
    the affinities below its ``topk``-th largest (over all C*N sources) are zeroed, the rest normalised to sum to
    1. Returns ``(N, K)``. (The row maximum is subtracted before ``exp``: the normalised weights are the same.)
    """
    contexts, n, dim = sources.shape
    weights = target @ sources.reshape(contexts * n, dim).T                        # N x C*N
    if allowed is not None:
        weights.view(n, contexts, n).masked_fill_(~allowed[:, None, :], float("-inf"))
    weights.sub_(weights.max(dim=1, keepdim=True).values).div_(temperature).exp_()
    kth = weights.topk(min(topk, weights.shape[1]), dim=1).values[:, -1:]
    weights.masked_fill_(weights < kth, 0.0)
    weights.div_(weights.sum(dim=1, keepdim=True))
    return weights @ labels.reshape(contexts * n, -1)


def propagate_video(features: Iterable[torch.Tensor], first_labels: torch.Tensor, n_last_frames: int = 7,
                    radius: int = 12, topk: int = 5, temperature: float = 0.1) -> Iterator[torch.Tensor]:
    """Soft labels ``(h, w, K)`` of frames 1, 2, ... from the features ``(h, w, D)`` of frames 0, 1, 2, ...
    (L2-normalised) and frame 0's labels. The context of frame t: frame 0 with its labels, and the last
    ``n_last_frames`` frames with their propagated labels (at patch resolution, before any upsampling)."""
    iterator = iter(features)
    first = next(iterator)
    h, w, dim = first.shape
    first, labels0 = first.reshape(h * w, dim), first_labels.reshape(h * w, -1).to(first.device)
    allowed = neighbourhood((h, w), radius, first.device)
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last_frames)  # the oldest drops out
    for feature in iterator:
        target = feature.reshape(h * w, dim)
        sources = torch.stack([first] + [f for f, _ in queue])
        labels = torch.stack([labels0] + [lab for _, lab in queue])
        soft = propagate(target, sources, labels, allowed, topk, temperature)
        queue.append((target, soft))
        yield soft.reshape(h, w, -1)


def labels_to_ids(soft: torch.Tensor, patch_size: int, size: tuple[int, int]) -> np.ndarray:
    """An id map of the original ``size`` (H, W) from soft labels ``(h, w, K)``: bilinear upsampling by the
    patch size, each object's map rescaled to [0, 1] (a map whose maximum is 0 is left as it is), arg-max over
    objects (the first on ties), nearest-neighbour resize to ``size``."""
    maps = F.interpolate(soft.permute(2, 0, 1).unsqueeze(0).float(), scale_factor=patch_size, mode="bilinear",
                         align_corners=False, recompute_scale_factor=False)[0]
    flat = maps.flatten(1)
    lowest, highest = flat.min(dim=1).values, flat.max(dim=1).values
    positive = highest > 0
    shifted = torch.where(positive[:, None, None], maps - lowest[:, None, None], maps)
    span = shifted.flatten(1).max(dim=1).values
    maps = torch.where((positive & (span > 0))[:, None, None], shifted / span.clamp(min=1e-30)[:, None, None],
                       shifted)
    ids = maps.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.NEAREST))
