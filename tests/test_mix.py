"""The PatchMix mixer: structure of the mixed images and of the targets, on index-filled images."""

from __future__ import annotations

import pytest
import torch

from patchmix.mix import mix_offsets, patch_mix, place_targets

# (image side, patch size): 16 tokens (1 leftover for m=3), 36 tokens, 64 tokens (1 leftover for m=3, 3 for m=...)
GRIDS = [(28, 7), (12, 2), (32, 4)]


def index_images(batch: int, side: int, patch: int, channels: int = 3) -> torch.Tensor:
    """Image i, patch t (row-major) holds the value i * 1000 + t everywhere."""
    grid = side // patch
    token = torch.arange(grid * grid).reshape(grid, grid)
    token = token.repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    images = torch.arange(batch)[:, None, None] * 1000 + token[None]
    return images[:, None].expand(batch, channels, side, side).float().contiguous()


def patch_values(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, T) value of every patch, checking that each patch is uniform (mixing moves whole patches)."""
    b, c, h, w = images.shape
    tiles = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * patch * patch)
    assert torch.all(tiles == tiles[..., :1]), "a patch was split or blended"
    return tiles[..., 0]


@pytest.mark.parametrize("side,patch", GRIDS)
@pytest.mark.parametrize("num_mix,batch", [(2, 3), (2, 8), (3, 5), (3, 9), (4, 7), (4, 12)])
def test_sources_and_proportions_match_mix_to_origin(side, patch, num_mix, batch):
    images = index_images(batch, side, patch)
    mixed, m2o, m2m = patch_mix(images, num_mix, patch, torch.Generator().manual_seed(batch * 7 + num_mix))
    values = patch_values(mixed, patch)
    source, token = values // 1000, values % 1000
    num_patches = (side // patch) ** 2
    group = num_patches // num_mix
    leftover = num_patches - group * num_mix

    # Unshuffle keeps positions: the patch at position t is some image's patch t.
    assert torch.equal(token.long(), torch.arange(num_patches).expand(batch, -1))
    for g in range(batch):
        counts = torch.bincount(source[g].long(), minlength=batch).float()
        named = m2o[g] > 0
        # Exactly the images the mix-to-origin row names contribute, each one group (+ the leftovers for g).
        assert torch.equal(counts > 0, named)
        expected = m2o[g] * num_mix * group
        expected[g] += leftover
        assert torch.equal(counts, expected)
        assert torch.allclose(m2o[g][named], torch.full((num_mix,), 1.0 / num_mix))
        assert set(torch.nonzero(named).flatten().tolist()) == {(g + j) % batch for j in range(num_mix)}


@pytest.mark.parametrize("num_mix,batch", [(2, 6), (3, 5), (3, 8), (4, 9)])
def test_mix_to_mix_equals_overlap_of_source_sets(num_mix, batch):
    images = index_images(batch, 12, 2)
    mixed, m2o, m2m = patch_mix(images, num_mix, 2, torch.Generator().manual_seed(3))
    sources = [set((patch_values(mixed, 2)[g] // 1000).long().tolist()) for g in range(batch)]
    for g in range(batch):
        for h in range(batch):
            overlap = len(sources[g] & sources[h]) / num_mix ** 2
            assert m2m[g, h].item() == pytest.approx(overlap)


@pytest.mark.parametrize("num_mix,batch", [(1, 1), (2, 3), (3, 5), (3, 16), (5, 9)])
def test_targets_are_row_stochastic(num_mix, batch):
    _, m2o, m2m = patch_mix(torch.randn(batch, 3, 8, 8), num_mix, 2)
    for targets in (m2o, m2m):
        assert targets.shape == (batch, batch)
        assert torch.all(targets >= 0)
        assert torch.allclose(targets.sum(1), torch.ones(batch))
    weights = sorted(m2m[0][m2m[0] > 0].tolist())
    expected = sorted([(num_mix - abs(d)) / num_mix ** 2 for d in range(-(num_mix - 1), num_mix)])
    assert weights == pytest.approx(expected)


def test_one_partition_shared_by_the_batch():
    batch, side, patch = 10, 12, 2
    mixed, _, _ = patch_mix(index_images(batch, side, patch), 3, patch, torch.Generator().manual_seed(0))
    offsets = (patch_values(mixed, patch) // 1000 - torch.arange(batch)[:, None]) % batch
    assert torch.equal(offsets, offsets[:1].expand_as(offsets))


def test_matches_the_official_shuffle_group_unshuffle_formulation():
    """Reference: shuffle tokens by pi, mixed slot l = g*m + j takes group phi(l) = (l + (l % m) * m) % (B*m),
    remainder slots untouched, unshuffle by argsort(pi) (spec section 1.2)."""
    batch, num_mix, side, patch, channels = 7, 3, 20, 4, 2
    images = torch.randn(batch, channels, side, side)
    mixed, _, _ = patch_mix(images, num_mix, patch, torch.Generator().manual_seed(11))

    num_patches = (side // patch) ** 2
    perm = torch.randperm(num_patches, generator=torch.Generator().manual_seed(11))
    tokens = images.reshape(batch, channels, side // patch, patch, side // patch, patch)
    tokens = tokens.permute(0, 2, 4, 1, 3, 5).reshape(batch, num_patches, -1)[:, perm]
    group = num_patches // num_mix
    head = tokens[:, :group * num_mix].reshape(batch * num_mix, group, -1)
    slots = torch.arange(batch * num_mix)
    phi = (slots + (slots % num_mix) * num_mix) % (batch * num_mix)
    head = head[phi].reshape(batch, group * num_mix, -1)
    shuffled = torch.cat([head, tokens[:, group * num_mix:]], dim=1)
    restored = shuffled[:, torch.argsort(perm)]
    reference = restored.reshape(batch, side // patch, side // patch, channels, patch, patch)
    reference = reference.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, side, side)
    assert torch.equal(mixed, reference)


def test_one_image_per_mix_is_the_identity():
    images = torch.randn(4, 3, 8, 8)
    mixed, m2o, m2m = patch_mix(images, 1, 4)
    assert torch.equal(mixed, images) and mixed is not images
    assert torch.equal(m2o, torch.eye(4)) and torch.equal(m2m, torch.eye(4))


def test_leftover_patches_stay_with_their_image():
    # 4x4 grid, m=3: groups of 5 patches and 1 leftover, which must hold the image's own content.
    batch = 6
    for seed in range(5):
        offsets = mix_offsets(16, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(torch.bincount(offsets, minlength=3), torch.tensor([6, 5, 5]))
        mixed, _, _ = patch_mix(index_images(batch, 28, 7), 3, 7, torch.Generator().manual_seed(seed))
        own = (patch_values(mixed, 7) // 1000 == torch.arange(batch)[:, None]).sum(1)
        assert torch.all(own == 6)


def test_reproducible_with_a_generator_and_input_untouched():
    images = torch.randn(6, 3, 16, 16, requires_grad=True)
    before = images.detach().clone()
    a = patch_mix(images, 2, 4, torch.Generator().manual_seed(5))[0]
    b = patch_mix(images, 2, 4, torch.Generator().manual_seed(5))[0]
    c = patch_mix(images, 2, 4, torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(images.detach(), before)
    assert not a.requires_grad  # runs under no_grad
    assert a.dtype == images.dtype


def test_half_precision_keeps_dtype():
    images = torch.randn(5, 3, 8, 8).to(torch.bfloat16)
    mixed, m2o, _ = patch_mix(images, 3, 2)
    assert mixed.dtype == torch.bfloat16 and m2o.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    images = torch.randn(8, 3, 32, 32)
    cpu = patch_mix(images, 3, 4, torch.Generator().manual_seed(1))
    gpu = patch_mix(images.cuda(), 3, 4, torch.Generator().manual_seed(1))
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("kwargs,message", [
    (dict(images=torch.randn(4, 3, 8, 8), num_mix=3, patch_size=2), "smaller than 2\\*num_mix-1 = 5"),
    (dict(images=torch.randn(4, 3, 8, 8), num_mix=0, patch_size=2), "num_mix must be an integer >= 1"),
    (dict(images=torch.randn(4, 3, 8, 8), num_mix=2.0, patch_size=2), "num_mix must be an integer >= 1"),
    (dict(images=torch.randn(4, 3, 10, 10), num_mix=2, patch_size=4), "not divisible by the patch size 4"),
    (dict(images=torch.randn(3, 8, 8), num_mix=2, patch_size=2), "expects a \\(B, C, H, W\\) batch"),
    (dict(images=torch.randn(40, 3, 8, 8), num_mix=5, patch_size=4), "num_mix 5 is larger than the 4 patches"),
])
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        patch_mix(**kwargs)


def test_place_targets_offsets_columns_and_smooths():
    local = patch_mix(torch.randn(5, 3, 4, 4), 2, 2)[1]
    placed = place_targets(local, smoothing=0.1, rank=2, world_size=3)
    assert placed.shape == (5, 15)
    assert torch.allclose(placed.sum(1), torch.ones(5))
    assert torch.allclose(placed[:, :10], torch.full((5, 10), 0.1 / 15))
    assert torch.allclose(placed[:, 10:], 0.9 * local + 0.1 / 15)
    assert torch.equal(place_targets(local, 0.0, 0, 1), local)
    with pytest.raises(ValueError, match="label smoothing"):
        place_targets(local, 1.0)
