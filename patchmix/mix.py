"""PatchMix: patch-level mixing of a batch of images and the soft targets it implies.

A mixed image is a mosaic, at the granularity of ViT tokens, of ``m`` consecutive images of the batch
(cyclically): group ``j`` of mixed image ``g`` comes from image ``(g + j) mod B``. The grid of ``T`` patches is
split into ``m`` groups of ``floor(T / m)`` patches by ONE random permutation shared by the whole batch; the
``T mod m`` leftover patches keep the image's own content. Every patch stays at its spatial position.

This is the structure of the official implementation (shuffle the tokens, mix groups across the batch,
unshuffle). Shuffling and unshuffling only serve to pick a random partition of the grid, so here the partition
is computed once as a per-patch "batch offset" and the mix is a single gather: same result, no Python loop over
images or patches.

Targets are dense ``(B, B)`` row-stochastic matrices over the local batch:

* mix-to-origin ``Y_m2o[g, (g + j) mod B] = 1/m`` for ``j = 0..m-1`` (the images a mixed image is made of);
* mix-to-mix ``Y_m2m[g, (g + d) mod B] = (m - |d|) / m**2`` for ``d = -(m-1)..(m-1)``: the number of source
  images two mixed images share, over ``m**2``.

:func:`place_targets` turns local targets into targets over the keys of all processes (column offset
``rank * B``) with optional label smoothing, exactly as the official code builds them.
"""

from __future__ import annotations

import torch

__all__ = ["patch_mix", "mix_offsets", "mix_to_origin_targets", "mix_to_mix_targets", "place_targets"]


def _check_arguments(images: torch.Tensor, num_mix: int, patch_size: int) -> None:
    if images.dim() != 4:
        raise ValueError(f"patch_mix expects a (B, C, H, W) batch of images, got a tensor of shape "
                         f"{tuple(images.shape)}.")
    if isinstance(num_mix, bool) or not isinstance(num_mix, int) or num_mix < 1:
        raise ValueError(f"num_mix must be an integer >= 1 (1 = no mixing), got {num_mix!r}.")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}.")
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch_size}; "
                         f"choose an image size that is a multiple of {patch_size} (e.g. "
                         f"{max(patch_size, height // patch_size * patch_size)}).")
    num_patches = (height // patch_size) * (width // patch_size)
    if num_mix > num_patches:
        raise ValueError(f"num_mix {num_mix} is larger than the {num_patches} patches of a "
                         f"{height}x{width} image with patch size {patch_size}: every mixed image needs at least "
                         f"one patch from each source. Use a smaller num_mix or patch size.")
    batch = images.shape[0]
    if num_mix > 1 and batch < 2 * num_mix - 1:
        raise ValueError(f"the batch per process ({batch}) is smaller than 2*num_mix-1 = {2 * num_mix - 1}: "
                         f"mixing {num_mix} images needs that many distinct neighbours for the mix-to-mix "
                         f"targets. Use a larger batch per process (batch_size / number of processes) or a "
                         f"smaller num_mix.")


def mix_offsets(num_patches: int, num_mix: int, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Batch offset ``j`` of every patch position (row-major), a ``(num_patches,)`` long tensor.

    One random permutation ``pi`` of the patches is drawn; shuffled slot ``s < m*S`` belongs to group
    ``s // S`` with ``S = num_patches // m``, the leftover slots to nobody (offset 0, i.e. the image keeps
    them). Patch ``t`` sits in slot ``argsort(pi)[t]``.
    """
    group_size = num_patches // num_mix
    gen_device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(num_patches, generator=generator, device=gen_device)
    slot_of_patch = torch.argsort(perm)
    offsets = torch.div(slot_of_patch, group_size, rounding_mode="floor")
    offsets = torch.where(slot_of_patch < group_size * num_mix, offsets, torch.zeros_like(offsets))
    return offsets.to(device if device is not None else gen_device)


def mix_to_origin_targets(batch: int, num_mix: int, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, B)`` targets: row ``g`` puts ``1/m`` on images ``g, g+1, ..., g+m-1`` (mod B)."""
    rows = torch.arange(batch, device=device)
    targets = torch.zeros(batch, batch, device=device, dtype=dtype)
    cols = (rows[:, None] + torch.arange(num_mix, device=device)) % batch
    targets[rows[:, None].expand_as(cols), cols] = 1.0 / num_mix
    return targets


def mix_to_mix_targets(batch: int, num_mix: int, device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, B)`` targets: row ``g`` puts ``(m - |d|) / m**2`` on mixed image ``g + d`` (mod B), ``|d| < m``."""
    rows = torch.arange(batch, device=device)
    shifts = torch.arange(-(num_mix - 1), num_mix, device=device)
    cols = (rows[:, None] + shifts) % batch
    weights = (num_mix - shifts.abs()).to(dtype) / num_mix ** 2
    targets = torch.zeros(batch, batch, device=device, dtype=dtype)
    targets[rows[:, None].expand_as(cols), cols] = weights.expand_as(cols)
    return targets


@torch.no_grad()
def patch_mix(images: torch.Tensor, num_mix: int, patch_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a batch at patch level; return ``(mixed, mix_to_origin, mix_to_mix)``.

    Args:
        images: ``(B, C, H, W)`` batch (any device and float dtype); not modified.
        num_mix: ``m``, the number of images in every mixed image. ``1`` returns the images unchanged and
            identity targets (plain instance discrimination).
        patch_size: side of a mixing unit in pixels; the ViT patch size, so one unit is one token.
        generator: optional ``torch.Generator`` for the random partition (reproducible runs). It may live on
            the CPU whatever the images' device.

    Returns:
        mixed images (same shape and dtype), and the two ``(B, B)`` row-stochastic target matrices over the
        local batch (column ``j`` = image ``j`` of this batch).
    """
    _check_arguments(images, num_mix, patch_size)
    batch, channels, height, width = images.shape
    device = images.device
    if num_mix == 1:
        eye = torch.eye(batch, device=device)
        return images.clone(), eye, eye.clone()

    grid_h, grid_w = height // patch_size, width // patch_size
    num_patches = grid_h * grid_w
    offsets = mix_offsets(num_patches, num_mix, generator, device)
    source = (torch.arange(batch, device=device)[:, None] + offsets[None, :]) % batch  # (B, T)

    p = patch_size
    tokens = images.reshape(batch, channels, grid_h, p, grid_w, p).permute(0, 2, 4, 1, 3, 5)
    tokens = tokens.reshape(batch, num_patches, channels * p * p)
    mixed = tokens[source, torch.arange(num_patches, device=device)[None, :]]
    mixed = mixed.reshape(batch, grid_h, grid_w, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    mixed = mixed.reshape(batch, channels, height, width).contiguous()
    return (mixed, mix_to_origin_targets(batch, num_mix, device),
            mix_to_mix_targets(batch, num_mix, device))


def place_targets(local_targets: torch.Tensor, smoothing: float = 0.0, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """Targets over the keys of all processes, ``(B, B * world_size)``.

    Keys are gathered in rank order, so this process's images are columns ``rank*B .. rank*B + B - 1``; other
    processes' keys are negatives only. Label smoothing follows the official code: every column gets
    ``smoothing / C`` and the positives ``(1 - smoothing) * w + smoothing / C`` (rows still sum to 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}.")
    batch = local_targets.shape[0]
    num_columns = batch * world_size
    targets = local_targets.new_full((batch, num_columns), smoothing / num_columns)
    targets[:, rank * batch:(rank + 1) * batch] += (1.0 - smoothing) * local_targets
    return targets
