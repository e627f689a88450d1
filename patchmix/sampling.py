"""APS (Asymmetric Patch Sampling, arXiv 2306.02854): the two views and which of their patches the model sees.

APS feeds the ViT only a quarter of the patches of each of two crops of an image. View 1 keeps a random subset
(*sparse sampling*); view 2 keeps patches chosen to overlap view 1's subset as little as possible (*selective
sampling*), so that the two inputs share little pixel content and the contrastive task cannot be solved by
matching pixels. To know how much a view-2 patch overlaps view 1's patches, both crops must be placed in the
original image: that is what the crop boxes are for.

The pieces, in the order a training step uses them:

* :class:`APSTransform` (data loader, one PIL image at a time): two views with the official augmentation, and
  for each view a small float tensor ``meta`` = ``(top, left, height, width, flipped, image_height,
  image_width)`` saying where the view comes from (:data:`META_FIELDS`). The default collate stacks them into
  ``(B, 7)`` tensors. The crop itself is :class:`RandomResizedCropWithBox`.
* :func:`aps_sampling` (training step, whole batch, any device): :func:`sparse_sampling` draws, per image, one
  random permutation of the ``G*G`` cells and splits it into ``nsampling`` disjoint chunks of ``k`` cells;
  :func:`uncovered_fractions` gives, for every chunk, the fraction ``r_c`` of each view-2 cell that the chunk's
  view-1 cells leave uncovered; :func:`selective_sampling` draws ``k`` view-2 cells without replacement with
  probability proportional to ``r_c ** power``. The result, :class:`APSSample`, holds ``(nsampling, B, k)``
  row-major cell indices for each view: chunk ``j`` of image ``b`` feeds the model the tokens
  ``view1[j, b]`` of view 1 and ``view2[j, b]`` of view 2 (the official model adds the position embedding to
  all tokens before it gathers them).

Geometry. Every box is in original-image pixels, as continuous intervals: a view with box
``(top, left, height, width)`` covers ``[top, top + height] x [left, left + width]``, and cell ``(a, b)`` of its
``G x G`` grid (row ``a``, column ``b``) covers rows ``top + [a, a + 1] * height / G`` and columns
``left + [b, b + 1] * width / G``, which is what a resize with ``align_corners=False`` does. A horizontally
flipped view shows crop column ``G - 1 - b`` at grid column ``b``. Cells of a grid are axis-aligned rectangles,
so the area a chunk covers of a view-2 cell is a sum of products of row overlaps and column overlaps: one small
matrix product per image and chunk, ``covered = Oy @ mask @ Ox^T`` (``Oy[a2, a1]``: overlap of view-2 row
``a2`` with view-1 row ``a1``; ``mask``: the chunk as a ``G x G`` 0/1 matrix). This is exact, not an
approximation, and costs ``O(G^3)`` per chunk instead of a loop over cells and patches.

Differences from the official code (github.com/visresearch/aps), all documented where they live:

1. **Flips.** The official code records the crop boxes before the horizontal flip and never looks at the flip,
   so whenever a view is flipped its cells are mapped to the wrong (mirrored) place in the image and the
   "least overlap" choice is geometrically wrong. By default the flip is taken into account
   (``respect_flips=True``); ``respect_flips=False`` reproduces the official behaviour exactly.
2. **Where and how the draws happen.** The official code samples per image inside the data-loader workers with
   numpy's global RNG (``np.random.shuffle`` and ``np.random.choice``); here the whole batch is sampled at once
   in the training step, from a ``torch.Generator``. The distributions are the same (proved in
   ``tests/test_sampling.py`` and ``tools/parity/aps_sampling.py``); the individual draws are not.
3. Nothing else: the coverage fractions, the ``1e-6`` threshold, the chunk size ``int(G * G * ratio)``, the
   ``r ** power`` weights and the behaviour when too few cells are uncovered (an error, see
   :func:`selective_sampling`) are the official ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "META_FIELDS", "CropBox", "RandomResizedCropWithBox", "APSTransform",
           "APSSample", "cells_per_chunk", "sparse_sampling", "cell_intervals", "uncovered_fractions",
           "selective_sampling", "aps_sampling"]

# The normalisation of the official APS pretraining (CIFAR statistics; its fine-tuning uses ImageNet's).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# Columns of a view's meta tensor. Pixel values are integers, exact in float32 up to 2**24.
META_FIELDS = ("top", "left", "height", "width", "flipped", "image_height", "image_width")
_TOP, _LEFT, _HEIGHT, _WIDTH, _FLIPPED = range(5)


# --------------------------------------------------------------------------------------------------------------
# Views with their boxes (data loader)


class CropBox(NamedTuple):
    """Where a view comes from: its crop box in original-image pixels, whether it was flipped, the image size."""

    top: int
    left: int
    height: int
    width: int
    flipped: bool
    image_height: int
    image_width: int

    def as_meta(self) -> torch.Tensor:
        """The ``(7,)`` float32 tensor of :data:`META_FIELDS` (what the loader collates and the step reads)."""
        return torch.tensor([float(value) for value in self], dtype=torch.float32)


class RandomResizedCropWithBox:
    """``RandomResizedCrop`` followed by a random horizontal flip, returning ``(view, CropBox)``.

    The step needs to know where each view lies in the original image (to map cells between views) and whether
    it was mirrored (a flipped view's column ``b`` shows crop column ``G - 1 - b``), so the crop and the flip
    are done here, together, and reported. The box is drawn by torchvision's own
    ``RandomResizedCrop.get_params`` (torch's global RNG, which our datasets seed per image) rather than by a
    re-implementation, and the flip decision is one ``torch.rand(1) < flip_prob`` draw right after it, as
    ``RandomHorizontalFlip`` does (drawn even when ``flip_prob`` is 0): the same seed gives the same view as
    ``RandomResizedCrop`` then ``RandomHorizontalFlip``, hence as the official ``RandomResizedCropBox``.

    Works on PIL images and on ``(..., H, W)`` tensors.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR, flip_prob: float = 0.5) -> None:
        self.size = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}.")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio!r}.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}.")
        self.scale, self.ratio = [float(s) for s in scale], [float(r) for r in ratio]
        self.interpolation, self.flip_prob = interpolation, float(flip_prob)

    def __call__(self, image):
        _, image_height, image_width = TF.get_dimensions(image)
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, self.scale, self.ratio)
        view = TF.resized_crop(image, top, left, height, width, self.size, self.interpolation, antialias=True)
        flipped = bool(torch.rand(1) < self.flip_prob)
        if flipped:
            view = TF.hflip(view)
        return view, CropBox(top, left, height, width, flipped, image_height, image_width)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation.value}, flip_prob={self.flip_prob})")


class APSTransform:
    """The APS pretraining transform: one image -> ``[view1, view2, meta1, meta2]``.

    Each view: :class:`RandomResizedCropWithBox` (official: 32 px, scale (0.15, 1), bilinear, flip 0.5), colour
    jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8, grayscale 0.2, ``ToTensor`` and normalisation with the
    CIFAR statistics. Both views use the same settings (the official code passes the same transform twice) and
    view 1 is drawn completely before view 2, in the official order of random draws. ``meta1``/``meta2`` are
    :meth:`CropBox.as_meta` tensors: the default collate turns a batch into ``[(B,C,S,S), (B,C,S,S), (B,7),
    (B,7)]``, what :func:`aps_sampling` takes.
    """

    def __init__(self, img_size: int = 32, scale: Sequence[float] = (0.15, 1.0),
                 mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD,
                 ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR, flip_prob: float = 0.5,
                 color_jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), color_jitter_prob: float = 0.8,
                 grayscale_prob: float = 0.2) -> None:
        if len(color_jitter) != 4:
            raise ValueError("color_jitter takes 4 values (brightness, contrast, saturation, hue), got "
                             f"{color_jitter!r}.")
        self.crop = RandomResizedCropWithBox(img_size, scale, ratio, interpolation, flip_prob)
        self.rest = transforms.Compose([
            transforms.RandomApply([transforms.ColorJitter(*color_jitter)], p=color_jitter_prob),
            transforms.RandomGrayscale(p=grayscale_prob),
            transforms.ToTensor(),
            transforms.Normalize(tuple(mean), tuple(std)),
        ])

    def __call__(self, image) -> list[torch.Tensor]:
        view1, box1 = self.crop(image)
        view1 = self.rest(view1)
        view2, box2 = self.crop(image)
        view2 = self.rest(view2)
        return [view1, view2, box1.as_meta(), box2.as_meta()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop={self.crop!r}, then={self.rest!r})"


# --------------------------------------------------------------------------------------------------------------
# Sampling (training step)


@dataclass(frozen=True)
class APSSample:
    """The cells one batch feeds the model, row-major indices into the ``G x G`` grid of each view.

    Attributes:
        view1: ``(nsampling, B, k)`` long, the sparse chunks of view 1 (disjoint within an image).
        view2: ``(nsampling, B, k)`` long, the selected cells of view 2, in the order they were drawn.
        uncovered: ``(nsampling, B, G*G)`` float, the fraction ``r_c`` of every view-2 cell that chunk ``j``
            leaves uncovered (what ``view2[j]`` was drawn from; for inspection and plots).
    """

    view1: torch.Tensor
    view2: torch.Tensor
    uncovered: torch.Tensor


def _check_grid(grid_size: int) -> None:
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive integer (image size / patch size), got {grid_size!r}.")


def cells_per_chunk(grid_size: int, sampling_ratio: float) -> int:
    """Cells per chunk, ``int(G * G * sampling_ratio)`` as in the official code (64 for G = 16, ratio 0.25).

    The official code truncates (``int``), it does not round; kept for identical chunk sizes.
    """
    _check_grid(grid_size)
    if not 0.0 < sampling_ratio <= 1.0:
        raise ValueError(f"sampling_ratio must be in (0, 1], got {sampling_ratio}.")
    size = int(grid_size * grid_size * sampling_ratio)
    if size < 1:
        raise ValueError(f"sampling_ratio {sampling_ratio} keeps no cell of a {grid_size}x{grid_size} grid.")
    return size


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sparse_sampling(batch_size: int, grid_size: int, chunk_size: int, nsampling: int,
                    generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Sparse sampling of view 1: ``(nsampling, B, chunk_size)`` long cell indices.

    Per image, one uniformly random permutation of the ``G*G`` cells, cut into ``nsampling`` consecutive chunks
    of ``chunk_size`` cells (the official ``np.random.shuffle`` then slicing): the chunks of an image are
    disjoint, and with ``nsampling * chunk_size == G*G`` (the official 4 x 64 of 256) they cover the grid.
    The permutations are the argsorts of ``(B, G*G)`` float64 uniforms (ties: probability ~1e-12 per image), one
    batched draw from ``generator`` (or torch's global CPU RNG), made on the generator's device and moved to
    ``device``.
    """
    _check_grid(grid_size)
    num_cells = grid_size * grid_size
    if chunk_size < 1 or nsampling < 1 or nsampling * chunk_size > num_cells:
        raise ValueError(f"{nsampling} disjoint chunks of {chunk_size} cells do not fit in a "
                         f"{grid_size}x{grid_size} grid ({num_cells} cells): need nsampling * chunk size <= "
                         f"{num_cells}, both >= 1.")
    keys = torch.rand(batch_size, num_cells, generator=generator, dtype=torch.float64,
                      device=_draw_device(generator))
    perm = keys.argsort(dim=1)[:, :nsampling * chunk_size]
    chunks = perm.reshape(batch_size, nsampling, chunk_size).transpose(0, 1).contiguous()
    return chunks.to(device) if device is not None else chunks


def cell_intervals(meta: torch.Tensor, grid_size: int, respect_flips: bool = True,
                   dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the cells of each view lie in the original image: ``(rows, cols)``, each ``(B, G, 2)``.

    ``rows[i, a] = (y0, y1)``: grid row ``a`` of view ``i`` covers original rows ``[y0, y1]``; ``cols[i, b]``
    likewise for grid column ``b``, in the order the view shows them: with ``respect_flips`` a flipped view's
    column ``b`` is crop column ``G - 1 - b``; without it (the official code) flips are ignored. ``meta``:
    ``(B, 7)`` rows of :data:`META_FIELDS` (only the box and the flip are used: the mapping is relative to the
    image, whose size does not matter).
    """
    _check_grid(grid_size)
    if meta.dim() != 2 or meta.shape[1] < 5:
        raise ValueError(f"meta must be (B, {len(META_FIELDS)}) rows of {META_FIELDS}, got shape "
                         f"{tuple(meta.shape)}.")
    meta = meta.to(dtype)
    steps = torch.arange(grid_size + 1, device=meta.device, dtype=dtype)
    # Edge e of the grid at top + e * (height / G): the official cell arithmetic (e * cell size).
    rows = meta[:, _TOP, None] + steps * (meta[:, _HEIGHT, None] / grid_size)
    cols = meta[:, _LEFT, None] + steps * (meta[:, _WIDTH, None] / grid_size)
    rows = torch.stack([rows[:, :-1], rows[:, 1:]], dim=-1)
    cols = torch.stack([cols[:, :-1], cols[:, 1:]], dim=-1)
    if respect_flips:
        flipped = meta[:, _FLIPPED, None, None] > 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    return rows, cols


def _overlaps(intervals2: torch.Tensor, intervals1: torch.Tensor) -> torch.Tensor:
    """``(B, G, G)`` lengths of ``intervals2[:, i] ∩ intervals1[:, j]`` (0 when disjoint)."""
    low = torch.maximum(intervals2[:, :, None, 0], intervals1[:, None, :, 0])
    high = torch.minimum(intervals2[:, :, None, 1], intervals1[:, None, :, 1])
    return (high - low).clamp_min(0)


def uncovered_fractions(meta1: torch.Tensor, meta2: torch.Tensor, chunks: torch.Tensor, grid_size: int,
                        respect_flips: bool = True, threshold: float = 1e-6,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """For every chunk of view-1 cells, the fraction of each view-2 cell it leaves uncovered.

    ``r_c = max(0, 1 - sum_{p in chunk} |c ∩ p| / |c|)`` in original-image pixels, and values below
    ``threshold`` (official: 1e-6) set to 0, so that cells covered up to rounding count as covered.

    Args:
        meta1, meta2: ``(B, 7)`` meta rows of the two views (:data:`META_FIELDS`).
        chunks: ``(..., B, k)`` long, row-major view-1 cell indices; the cells of a chunk must be distinct
            (a chunk is a set: :func:`sparse_sampling` draws them so).
        grid_size: ``G``, cells per side of both views (image size / patch size).
        respect_flips: map a flipped view's cells to their mirrored place (default; geometrically right).
            ``False`` ignores flips exactly as the official code does.
        threshold: fractions below it become 0.
        dtype: of the geometry; float64 keeps the official 1e-6 threshold meaningful on large images (pass
            float32 on devices without float64).

    Returns:
        ``(..., B, G*G)`` fractions in ``[0, 1]``, on the device of ``meta1``.
    """
    if meta1.shape != meta2.shape:
        raise ValueError(f"meta1 and meta2 differ in shape: {tuple(meta1.shape)} vs {tuple(meta2.shape)}.")
    if chunks.dim() < 2 or chunks.shape[-2] != meta1.shape[0]:
        raise ValueError(f"chunks must be (..., B, k) with B = {meta1.shape[0]}, got shape {tuple(chunks.shape)}.")
    rows1, cols1 = cell_intervals(meta1, grid_size, respect_flips, dtype)
    rows2, cols2 = cell_intervals(meta2.to(meta1.device), grid_size, respect_flips, dtype)
    overlap_rows = _overlaps(rows2, rows1)  # [i, a2, a1]
    overlap_cols = _overlaps(cols2, cols1)  # [i, b2, b1]
    chunks = chunks.to(meta1.device)
    mask = torch.zeros(*chunks.shape[:-1], grid_size * grid_size, device=meta1.device, dtype=dtype)
    mask.scatter_(-1, chunks, 1.0)
    mask = mask.unflatten(-1, (grid_size, grid_size))  # [..., i, a1, b1]
    covered = overlap_rows @ mask @ overlap_cols.transpose(-1, -2)  # [..., i, a2, b2]: area covered
    meta2 = meta2.to(device=meta1.device, dtype=dtype)
    cell_area = (meta2[:, _HEIGHT] / grid_size) * (meta2[:, _WIDTH] / grid_size)
    uncovered = 1.0 - covered / cell_area[:, None, None]
    uncovered = torch.where(uncovered < threshold, torch.zeros_like(uncovered), uncovered)
    return uncovered.flatten(-2)


def selective_sampling(uncovered: torch.Tensor, num_samples: int, power: float = 3.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``num_samples`` cells without replacement, ``P(c) ∝ uncovered[c] ** power``, along the last dim.

    Sequential weighted draws without replacement (the official ``np.random.choice(replace=False, p=...)``)
    are done in one shot by the exponential race: give every cell an arrival time ``E_c / w_c`` with
    ``E_c ~ Exp(1)`` i.i.d. and keep the ``k`` earliest. The earliest arrival is cell ``c`` with probability
    ``w_c / sum w``, and by memorylessness the rest of the race is again such a race among the other cells, so
    the arrival order has exactly the distribution of sequential draws without replacement (the Gumbel-top-k
    trick, as ``log w_c - log E_c`` is ``log w_c`` plus Gumbel noise). The indices come in arrival order, the
    order of sequential draws. Weights are handled as logs (``power * log r``), so no weight underflows.
    ``0 ** 0`` is 1, as in numpy: ``power=0`` draws uniformly among all cells, covered ones included.

    Too few candidates: when fewer than ``num_samples`` cells have a non-zero weight, the official call raises
    (numpy: ``ValueError: Fewer non-zero entries in p than size``, or ``probabilities contain NaN`` when all
    weights are 0), which stops the official training in its data-loader worker. This function raises a
    ``ValueError`` too, rather than returning covered cells. With the official settings it does not happen in
    practice: three quarters of view 2 would have to be completely covered by one random quarter of view 1's
    cells (in 245,760 simulated chunks of G = 16, scale (0.15, 1), the fewest candidates were 167 of 256, for
    64 needed). Large sampling ratios can reach it (e.g. one chunk of all cells when view 2 lies inside view
    1). The check reads one boolean back from the device.

    Args:
        uncovered: ``(..., N)`` non-negative fractions (:func:`uncovered_fractions`).
        num_samples: ``k``.
        power: exponent of the weights, ``>= 0`` (official 3).
        generator: for the ``Exp(1)`` times (drawn on its device, then moved); torch's global CPU RNG if None.

    Returns:
        ``(..., k)`` long indices, distinct along the last dim, on ``uncovered``'s device.
    """
    if not power >= 0.0 or math.isinf(power):
        raise ValueError(f"power must be a finite number >= 0, got {power}.")
    num_cells = uncovered.shape[-1]
    if not 1 <= num_samples <= num_cells:
        raise ValueError(f"cannot draw {num_samples} of {num_cells} cells without replacement.")
    if power == 0.0:
        log_weights = torch.zeros_like(uncovered)
    else:
        log_weights = power * torch.log(uncovered)  # -inf where uncovered == 0
    candidates = log_weights > -math.inf
    short = candidates.sum(-1) < num_samples
    if bool(short.any()):
        fewest = int(candidates.sum(-1).min())
        raise ValueError(
            f"selective sampling needs {num_samples} view-2 cells that are not completely covered, but "
            f"{int(short.sum())} of {short.numel()} (chunk, image) pairs have fewer (fewest: {fewest}). The "
            f"official code fails here too (numpy: 'Fewer non-zero entries in p than size'). Use a smaller "
            f"sampling_ratio (or a larger crop scale).")
    times = torch.empty(uncovered.shape, dtype=uncovered.dtype, device=_draw_device(generator))
    times.exponential_(generator=generator)
    times = times.to(uncovered.device)
    keys = torch.where(candidates, log_weights - torch.log(times), torch.full_like(log_weights, -math.inf))
    return keys.topk(num_samples, dim=-1, largest=True, sorted=True).indices


def aps_sampling(meta1: torch.Tensor, meta2: torch.Tensor, grid_size: int, sampling_ratio: float = 0.25,
                 nsampling: int = 4, power: float = 3.0, respect_flips: bool = True,
                 generator: torch.Generator | None = None, threshold: float = 1e-6,
                 dtype: torch.dtype = torch.float64) -> APSSample:
    """The APS sampling of one batch: sparse chunks of view 1 and, for each, the selected cells of view 2.

    Args:
        meta1, meta2: ``(B, 7)`` meta rows of the two views (from :class:`APSTransform`), on any device.
        grid_size: ``G`` = image size / patch size (official: 32 / 2 = 16).
        sampling_ratio: fraction of the cells per chunk (official 0.25: ``k = int(G*G*ratio)`` = 64).
        nsampling: chunks per image (official 4: one optimiser step per chunk).
        power: selective-sampling exponent (official 3).
        respect_flips: map flipped views correctly (default); ``False`` = the official (flip-blind) mapping.
        generator: one ``torch.Generator`` for all draws (reproducible runs), or torch's global CPU RNG.
        threshold, dtype: see :func:`uncovered_fractions`.

    Returns:
        :class:`APSSample` with ``view1``/``view2`` of shape ``(nsampling, B, k)`` on ``meta1``'s device.
    """
    k = cells_per_chunk(grid_size, sampling_ratio)
    view1 = sparse_sampling(meta1.shape[0], grid_size, k, nsampling, generator, device=meta1.device)
    uncovered = uncovered_fractions(meta1, meta2, view1, grid_size, respect_flips, threshold, dtype)
    view2 = selective_sampling(uncovered, k, power, generator)
    return APSSample(view1=view1, view2=view2, uncovered=uncovered)
