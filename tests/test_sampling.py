"""APS sampling (patchmix/sampling.py) against plain-loop references, hand-made geometry, pixels and the
official code's numbers (tests/fixtures/aps_sampling_parity.json)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from patchmix.sampling import (
    CIFAR_MEAN,
    CIFAR_STD,
    META_FIELDS,
    APSSample,
    APSTransform,
    CropBox,
    RandomResizedCropWithBox,
    aps_sampling,
    cell_intervals,
    cells_per_chunk,
    selective_sampling,
    sparse_sampling,
    uncovered_fractions,
)

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "aps_sampling_parity.json"


def meta(top, left, height, width, flipped=False, image_hw=(32, 32)) -> torch.Tensor:
    return torch.tensor([top, left, height, width, float(flipped), *image_hw], dtype=torch.float64)


def cells(*pairs, grid) -> list[int]:
    return [row * grid + col for row, col in pairs]


# --------------------------------------------------------------------------------------------------------------
# Plain-loop references


def reference_uncovered(meta1, meta2, chunk, grid, respect_flips, threshold=1e-6) -> list[float]:
    """r_c of every view-2 cell, one cell and one chunk cell at a time, boxes built from the definitions."""

    def cell_box(m, index):
        top, left, height, width, flipped = (float(v) for v in m[:5])
        row, col = divmod(index, grid)
        if respect_flips and flipped:
            col = grid - 1 - col
        y0, x0 = top + row * height / grid, left + col * width / grid
        return y0, x0, y0 + height / grid, x0 + width / grid

    result = []
    for c in range(grid * grid):
        y0, x0, y1, x1 = cell_box(meta2, c)
        covered = 0.0
        for p in chunk:
            py0, px0, py1, px1 = cell_box(meta1, int(p))
            dy, dx = min(y1, py1) - max(y0, py0), min(x1, px1) - max(x0, px0)
            if dy > 0 and dx > 0:
                covered += dy * dx
        r = max(0.0, 1.0 - covered / ((y1 - y0) * (x1 - x0)))
        result.append(0.0 if r < threshold else r)
    return result


def sequential_distribution(weights: list[float], k: int) -> dict[tuple[int, ...], float]:
    """Exact probability of every ordered k-tuple under sequential weighted draws without replacement."""
    probabilities = {}
    for order in itertools.permutations(range(len(weights)), k):
        probability, remaining = 1.0, sum(weights)
        for index in order:
            probability *= weights[index] / remaining
            remaining -= weights[index]
        probabilities[order] = probability
    return probabilities


def max_abs_z(counts: np.ndarray, probabilities: np.ndarray, draws: int) -> float:
    """Largest |z| of multinomial counts against their exact probabilities (cells expected >= 5 times; the rest
    pooled)."""
    expected = draws * probabilities
    frequent = expected >= 5
    observed = np.append(counts[frequent], counts[~frequent].sum())
    expected = np.append(expected[frequent], expected[~frequent].sum())
    keep = (expected > 0) & (expected < draws)
    z = (observed[keep] - expected[keep]) / np.sqrt(expected[keep] * (1 - expected[keep] / draws))
    return float(np.abs(z).max())


# --------------------------------------------------------------------------------------------------------------
# Sparse sampling


def test_cells_per_chunk_truncates_like_the_official_code():
    assert cells_per_chunk(16, 0.25) == 64
    assert cells_per_chunk(14, 0.25) == 49
    assert cells_per_chunk(10, 0.57) == int(100 * 0.57) == 56  # int(), not round(): 56.99999999999999
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            cells_per_chunk(16, bad)
    with pytest.raises(ValueError, match="keeps no cell"):
        cells_per_chunk(2, 0.2)


@pytest.mark.parametrize("grid,k,nsampling", [(16, 64, 4), (4, 3, 5), (3, 2, 2)])
def test_chunks_are_disjoint_and_match_a_per_image_permutation(grid, k, nsampling):
    batch = 7
    chunks = sparse_sampling(batch, grid, k, nsampling, torch.Generator().manual_seed(5))
    assert chunks.shape == (nsampling, batch, k) and chunks.dtype == torch.long
    # Reference: one permutation per image (argsort of its own uniforms, drawn image after image), sliced.
    generator = torch.Generator().manual_seed(5)
    for b in range(batch):
        perm = torch.rand(grid * grid, dtype=torch.float64, generator=generator).argsort().tolist()
        used = []
        for j in range(nsampling):
            assert chunks[j, b].tolist() == perm[j * k:(j + 1) * k]
            used += chunks[j, b].tolist()
        assert len(set(used)) == len(used) == nsampling * k  # disjoint
        if nsampling * k == grid * grid:
            assert sorted(used) == list(range(grid * grid))  # covering


def test_chunk_permutations_are_uniform():
    # 2x2 grid, 2 chunks of 2: the ordered first chunk takes 12 values, each with probability 1/12.
    draws = 24000
    chunks = sparse_sampling(draws, 2, 2, 2, torch.Generator().manual_seed(0))
    codes = (chunks[0, :, 0] * 4 + chunks[0, :, 1]).numpy()
    counts = np.bincount(codes, minlength=16)
    ordered = [a * 4 + b for a in range(4) for b in range(4) if a != b]
    assert counts.sum() == counts[ordered].sum() == draws
    assert max_abs_z(counts[ordered], np.full(12, 1 / 12), draws) < 4.5


def test_sparse_sampling_rejects_chunks_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        sparse_sampling(2, 4, 5, 4)
    with pytest.raises(ValueError):
        sparse_sampling(2, 0, 1, 1)


# --------------------------------------------------------------------------------------------------------------
# Coverage fractions


def test_cell_intervals_by_hand():
    rows, cols = cell_intervals(torch.stack([meta(2, 4, 8, 12), meta(2, 4, 8, 12, flipped=True)]), 4)
    assert rows[0].tolist() == [[2, 4], [4, 6], [6, 8], [8, 10]]
    assert cols[0].tolist() == [[4, 7], [7, 10], [10, 13], [13, 16]]
    assert torch.equal(rows[1], rows[0])
    assert cols[1].tolist() == [[13, 16], [10, 13], [7, 10], [4, 7]]  # grid column 0 shows the crop's right edge
    _, blind = cell_intervals(torch.stack([meta(2, 4, 8, 12, flipped=True)]), 4, respect_flips=False)
    assert torch.equal(blind[0], cols[0])


@pytest.mark.parametrize("respect_flips", [True, False])
@pytest.mark.parametrize("grid", [3, 4, 8])
def test_uncovered_fractions_match_the_loop_reference_on_random_boxes(grid, respect_flips):
    generator = torch.Generator().manual_seed(grid)
    batch, nsampling, k = 12, 2, max(1, grid * grid // 4)
    metas = []
    for _ in range(2):
        rows = []
        for _ in range(batch):
            image_h, image_w = (int(v) for v in torch.randint(8, 300, (2,), generator=generator))
            h = int(torch.randint(1, image_h + 1, (1,), generator=generator))
            w = int(torch.randint(1, image_w + 1, (1,), generator=generator))
            top = int(torch.randint(0, image_h - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, image_w - w + 1, (1,), generator=generator))
            flipped = bool(torch.rand(1, generator=generator) < 0.5)
            rows.append(meta(top, left, h, w, flipped, (image_h, image_w)))
        metas.append(torch.stack(rows))
    # Half of the pairs overlap a lot: view 2 = view 1 moved by (1, 2) pixels.
    metas[1][::2, :4] = metas[0][::2, :4] + torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    chunks = sparse_sampling(batch, grid, k, nsampling, generator)
    ours = uncovered_fractions(metas[0], metas[1], chunks, grid, respect_flips=respect_flips)
    assert ours.shape == (nsampling, batch, grid * grid) and ours.dtype == torch.float64
    for j in range(nsampling):
        for b in range(batch):
            expected = reference_uncovered(metas[0][b], metas[1][b], chunks[j, b], grid, respect_flips)
            assert ours[j, b].tolist() == pytest.approx(expected, abs=1e-9)
    assert (ours > 0).any() and (ours < 1).any()


G = 4
CHUNK = cells((0, 0), (1, 1), (1, 2), (2, 3), grid=G)  # no mirror pair inside: a mirror error shows
MIRROR = cells((0, 3), (1, 2), (1, 1), (2, 0), grid=G)


def zero_cells(uncovered: torch.Tensor) -> list[int]:
    return sorted(torch.nonzero(uncovered == 0).flatten().tolist())


@pytest.mark.parametrize("flip1,flip2,fixed_zeros,blind_zeros", [
    (False, True, MIRROR, CHUNK),   # view 2 flipped: its mirrored cells are the covered ones
    (True, False, MIRROR, CHUNK),   # view 1 flipped: its chunk lies mirrored in the image
    (True, True, CHUNK, CHUNK),     # both flipped: the mirrors cancel
    (False, False, CHUNK, CHUNK),
])
def test_identical_boxes_and_flips_by_hand(flip1, flip2, fixed_zeros, blind_zeros):
    meta1 = meta(3, 5, 16, 20, flip1)[None]
    meta2 = meta(3, 5, 16, 20, flip2)[None]
    chunk = torch.tensor(CHUNK)[None, None]
    fixed = uncovered_fractions(meta1, meta2, chunk, G)[0, 0]
    blind = uncovered_fractions(meta1, meta2, chunk, G, respect_flips=False)[0, 0]
    assert zero_cells(fixed) == sorted(fixed_zeros)
    assert zero_cells(blind) == sorted(blind_zeros)
    # Identical grids: every other cell is untouched.
    assert set(fixed.tolist()) == {0.0, 1.0} and set(blind.tolist()) == {0.0, 1.0}


def test_half_cell_shift_by_hand():
    # 2x2 grids of 2-px cells; view 2 is view 1 moved right by 1 px (half a cell). Chunk = view-1 cell (0, 0),
    # covering x in [0, 2]: view-2 cell (0, 0) (x in [1, 3]) is half covered, the others not at all.
    meta1, meta2 = meta(0, 0, 4, 4)[None], meta(0, 1, 4, 4)[None]
    chunk = torch.tensor([[[0]]])
    assert uncovered_fractions(meta1, meta2, chunk, 2)[0, 0].tolist() == [0.5, 1.0, 1.0, 1.0]
    # View 2 flipped: its grid column 0 is now x in [3, 5], column 1 is x in [1, 3].
    flipped = meta(0, 1, 4, 4, flipped=True)[None]
    assert uncovered_fractions(meta1, flipped, chunk, 2)[0, 0].tolist() == [1.0, 0.5, 1.0, 1.0]
    assert uncovered_fractions(meta1, flipped, chunk, 2, respect_flips=False)[0, 0].tolist() == [0.5, 1, 1, 1]


def test_threshold_zeroes_near_complete_cover():
    # View-2 cell of width 1 covered up to 1e-7 of its area -> 0 with the official threshold, kept without it.
    meta1, meta2 = meta(0, 0, 1, 1 - 1e-7)[None], meta(0, 0, 1, 1)[None]
    chunk = torch.tensor([[[0]]])
    assert uncovered_fractions(meta1, meta2, chunk, 1)[0, 0].item() == 0.0
    assert uncovered_fractions(meta1, meta2, chunk, 1, threshold=0.0)[0, 0].item() == pytest.approx(1e-7)


# --------------------------------------------------------------------------------------------------------------
# Selective sampling


def test_never_picks_a_covered_cell_when_enough_are_uncovered():
    generator = torch.Generator().manual_seed(1)
    uncovered = torch.rand(4, 300, 64, dtype=torch.float64, generator=generator)
    uncovered[uncovered < 0.6] = 0.0  # about 25 candidates per row
    positive = (uncovered > 0).sum(-1)
    k = int(positive.min())
    picks = selective_sampling(uncovered, k, 3.0, generator)
    assert picks.shape == (4, 300, k)
    assert torch.all(uncovered.gather(-1, picks) > 0)
    assert torch.all(picks.sort(-1).values.diff(dim=-1) > 0)  # distinct


def test_exactly_k_candidates_are_all_taken():
    uncovered = torch.zeros(3, 10, dtype=torch.float64)
    uncovered[0, [1, 4, 7]] = torch.tensor([0.2, 1.0, 1e-3], dtype=torch.float64)
    uncovered[1, [0, 2, 9]] = 1.0
    uncovered[2, [3, 5, 6]] = torch.tensor([1e-6, 1e-6, 1.0], dtype=torch.float64)  # weights down to 1e-18
    picks = selective_sampling(uncovered, 3, 3.0, torch.Generator().manual_seed(0))
    assert [sorted(row) for row in picks.tolist()] == [[1, 4, 7], [0, 2, 9], [3, 5, 6]]


def test_too_few_candidates_raise_like_the_official_code():
    uncovered = torch.zeros(2, 16, dtype=torch.float64)
    uncovered[:, :5] = 0.5
    uncovered[1, 5] = 0.5
    with pytest.raises(ValueError, match="Fewer non-zero entries"):
        selective_sampling(uncovered, 6, 3.0)
    assert selective_sampling(uncovered[1:], 6, 3.0).shape == (1, 6)
    with pytest.raises(ValueError, match="Fewer non-zero entries"):
        selective_sampling(torch.zeros(1, 16, dtype=torch.float64), 1, 3.0)  # official: NaN probabilities


def test_ordered_draws_match_sequential_sampling_without_replacement():
    """Every ordered triple of 5 cells against the exact sequential probabilities (a Python loop)."""
    r = [0.9, 0.3, 1.0, 0.6, 0.45]
    power, k, draws = 3.0, 3, 120_000
    exact = sequential_distribution([v ** power for v in r], k)
    orders = list(exact)
    uncovered = torch.tensor(r, dtype=torch.float64).expand(draws, -1)
    picks = selective_sampling(uncovered, k, power, torch.Generator().manual_seed(2))
    index = {order: i for i, order in enumerate(orders)}
    counts = np.bincount([index[tuple(row)] for row in picks.tolist()], minlength=len(orders))
    assert max_abs_z(counts, np.array([exact[o] for o in orders]), draws) < 4.5


def test_first_picks_on_a_real_grid_follow_r_to_the_power():
    meta1, meta2 = meta(0, 0, 32, 32)[None], meta(6, 9, 20, 17)[None]
    chunk = sparse_sampling(1, 16, 64, 1, torch.Generator().manual_seed(4))
    r = uncovered_fractions(meta1, meta2, chunk, 16)[0, 0]
    draws = 40_000
    picks = selective_sampling(r.expand(draws, -1), 64, 3.0, torch.Generator().manual_seed(5))
    probabilities = (r ** 3 / (r ** 3).sum()).numpy()
    first = np.bincount(picks[:, 0].numpy(), minlength=256)
    assert (probabilities == 0).sum() > 10 and first[probabilities == 0].sum() == 0
    assert max_abs_z(first, probabilities, draws) < 4.5


def test_power_zero_is_uniform_over_all_cells_as_in_numpy():
    uncovered = torch.tensor([0.0, 0.0, 1.0, 0.5], dtype=torch.float64).expand(8000, -1)
    first = np.bincount(selective_sampling(uncovered, 1, 0.0, torch.Generator().manual_seed(0))[:, 0].numpy(),
                        minlength=4)
    assert max_abs_z(first, np.full(4, 0.25), 8000) < 4.5
    with pytest.raises(ValueError):
        selective_sampling(uncovered, 1, -1.0)


# --------------------------------------------------------------------------------------------------------------
# The whole batch


def test_aps_sampling_end_to_end_and_reproducible():
    generator = torch.Generator().manual_seed(0)
    crop = RandomResizedCropWithBox(32, scale=(0.15, 1.0))
    image = torch.zeros(3, 32, 32)
    metas = [[], []]
    torch.manual_seed(0)
    for _ in range(64):
        for view in range(2):
            metas[view].append(crop(image)[1].as_meta())
    meta1, meta2 = torch.stack(metas[0]), torch.stack(metas[1])
    sample = aps_sampling(meta1, meta2, 16, generator=generator)
    assert isinstance(sample, APSSample)
    assert sample.view1.shape == sample.view2.shape == (4, 64, 64)
    assert sample.uncovered.shape == (4, 64, 256)
    assert torch.equal(sample.uncovered, uncovered_fractions(meta1, meta2, sample.view1, 16))
    assert torch.all(sample.uncovered.gather(-1, sample.view2) > 0)
    again = aps_sampling(meta1, meta2, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.view1, sample.view1) and torch.equal(again.view2, sample.view2)
    flipped = (meta1[:, 4] + meta2[:, 4]) > 0  # the fix changes the fractions where a view is flipped
    blind = uncovered_fractions(meta1, meta2, sample.view1, 16, respect_flips=False)
    assert not torch.equal(blind[:, flipped], sample.uncovered[:, flipped])
    assert torch.equal(blind[:, ~flipped], sample.uncovered[:, ~flipped])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_aps_sampling_on_cuda_matches_cpu_fractions():
    meta1 = torch.tensor([[0, 0, 32, 32, 0, 32, 32], [3, 4, 20, 18, 1, 32, 32]], dtype=torch.float32)
    meta2 = torch.tensor([[5, 2, 25, 30, 1, 32, 32], [0, 0, 32, 32, 0, 32, 32]], dtype=torch.float32)
    sample = aps_sampling(meta1.cuda(), meta2.cuda(), 16, generator=torch.Generator(device="cuda").manual_seed(0))
    assert sample.view1.device.type == sample.view2.device.type == "cuda"
    assert torch.equal(sample.uncovered.cpu(), uncovered_fractions(meta1, meta2, sample.view1.cpu(), 16))
    assert torch.all(sample.uncovered.gather(-1, sample.view2) > 0)


# --------------------------------------------------------------------------------------------------------------
# Views, boxes and pixels


def coordinate_image(height: int = 40, width: int = 48) -> Image.Image:
    """Red = 5 * column, green = 5 * row: every pixel says where it is."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return Image.fromarray(np.stack([cols * 5, rows * 5, np.zeros_like(rows)], -1).astype(np.uint8))


def test_crop_box_and_flip_match_the_pixels():
    image, size = coordinate_image(), 32
    crop = RandomResizedCropWithBox(size, scale=(0.2, 1.0))
    flips = 0
    for seed in range(60):
        torch.manual_seed(seed)
        view, box = crop(image)
        assert isinstance(box, CropBox) and (box.image_height, box.image_width) == (40, 48)
        pixels = np.asarray(view).astype(np.float64) / 5
        u = np.arange(size)
        column = size - 1 - u if box.flipped else u
        # Bilinear resize (align_corners=False): output pixel u samples crop coordinate (u + 0.5) * w / S - 0.5.
        expected_x = box.left + (column + 0.5) * box.width / size - 0.5
        expected_y = box.top + (u + 0.5) * box.height / size - 0.5
        inner = slice(2, -2)  # the borders are clamped / filtered
        assert np.abs(pixels[inner, inner, 0] - expected_x[None, inner]).max() < 0.35
        assert np.abs(pixels[inner, inner, 1] - expected_y[inner, None]).max() < 0.35
        flips += box.flipped
    assert 10 < flips < 50


def test_cell_intervals_of_a_view_are_where_its_pixels_come_from():
    """What the coverage uses (meta -> cell places, flips included) against the pixels of real views."""
    image, size, grid = coordinate_image(), 32, 8
    crop = RandomResizedCropWithBox(size, scale=(0.3, 1.0))
    for seed in range(40):
        torch.manual_seed(seed)
        view, box = crop(image)
        rows, cols = cell_intervals(box.as_meta()[None], grid)
        pixels = np.asarray(view).astype(np.float64) / 5
        cell = size // grid
        for b in range(1, grid - 1):  # inner cells: away from the clamped borders
            mean_x = pixels[cell:-cell, b * cell:(b + 1) * cell, 0].mean()
            centre = cols[0, b].mean().item() - 0.5  # pixel index of a continuous coordinate: x - 0.5
            assert abs(mean_x - centre) < 0.35, (seed, b, box)
        for a in range(1, grid - 1):
            mean_y = pixels[a * cell:(a + 1) * cell, cell:-cell, 1].mean()
            assert abs(mean_y - (rows[0, a].mean().item() - 0.5)) < 0.35


def test_aps_transform_is_the_official_pipeline_with_boxes():
    """Same torch seed: the same views as RandomResizedCrop + flip + jitter + grayscale + normalise, twice."""
    official = transforms.Compose([
        transforms.RandomResizedCrop(32, scale=(0.15, 1.0), interpolation=InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    ours = APSTransform()
    rng = np.random.default_rng(0)
    for seed in range(20):
        image = Image.fromarray(rng.integers(0, 256, size=(36, 40, 3), dtype=np.uint8))
        torch.manual_seed(seed)
        expected = [official(image), official(image)]
        torch.manual_seed(seed)
        view1, view2, meta1, meta2 = ours(image)
        assert torch.equal(view1, expected[0]) and torch.equal(view2, expected[1])
        for m in (meta1, meta2):
            assert m.shape == (len(META_FIELDS),) and m.dtype == torch.float32
            assert m[5:].tolist() == [36, 40] and m[4].item() in (0.0, 1.0)
        torch.manual_seed(seed)
        box = transforms.RandomResizedCrop.get_params(image, [0.15, 1.0], [3 / 4, 4 / 3])
        assert meta1[:4].tolist() == list(box)


def test_aps_transform_settings_and_collate():
    transform = APSTransform(img_size=16, scale=(0.5, 1.0), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                             color_jitter_prob=0.0, grayscale_prob=0.0)
    image = Image.fromarray(np.full((24, 24, 3), 128, dtype=np.uint8))
    batch = torch.utils.data.default_collate([transform(image) for _ in range(5)])
    assert [tuple(t.shape) for t in batch] == [(5, 3, 16, 16), (5, 3, 16, 16), (5, 7), (5, 7)]
    assert torch.all(batch[2][:, 2] * batch[2][:, 3] >= 0.5 * 24 * 24 * 0.74)  # scale >= 0.5 (box rounding)
    assert torch.allclose(batch[0], torch.full_like(batch[0], (128 / 255 - 0.5) / 0.25), atol=1e-2)


# --------------------------------------------------------------------------------------------------------------
# Against the official code's numbers


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_uncovered_fractions_equal_the_official_ones(golden):
    assert golden["threshold"] == 1e-6
    flipped_changed = 0
    for case in golden["cases"]:
        meta1 = meta(*case["box1"], case["flips"][0], case["image"])[None]
        meta2 = meta(*case["box2"], case["flips"][1], case["image"])[None]
        chunks = torch.tensor(case["chunks"])[:, None, :]
        official = torch.tensor(case["official"], dtype=torch.float64)
        blind = uncovered_fractions(meta1, meta2, chunks, case["grid"], respect_flips=False)[:, 0]
        assert (blind - official).abs().max().item() < 1e-12, case["name"]
        fixed = uncovered_fractions(meta1, meta2, chunks, case["grid"])[:, 0]
        if any(case["flips"]):
            flipped_changed += not torch.allclose(fixed, official)
        else:
            assert (fixed - official).abs().max().item() < 1e-12, case["name"]
    assert flipped_changed >= 5  # the fixture holds flips that matter


def test_golden_fixture_names_the_official_commit(golden):
    assert len(golden["official_commit"]) == 40
    assert len(golden["cases"]) >= 10 and all(math.isfinite(v) for c in golden["cases"]
                                              for row in c["official"] for v in row)
