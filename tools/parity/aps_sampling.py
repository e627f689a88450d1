"""Proof that our APS sampling (``patchmix/sampling.py``) computes what the official APS code computes.

What it proves, against the functions of github.com/visresearch/aps (``asym_patch_sampling.py`` and
``augmentation.py``), imported from a checkout and run as they are:

1. **Views and boxes.** With the same torch seed, our :class:`~patchmix.sampling.APSTransform` returns the same
   two views (bit for bit) as the official ``train_transforms`` called twice, and the same crop boxes.
2. **Coverage fractions.** For the same two boxes and the same view-1 chunks (the official chunks, recorded
   from ``get_random_patch_sequence_index_pair``), our ``uncovered_fractions`` equals the fractions the
   official ``sample_overlap_less_patches_with_box1`` computes (recorded from its
   ``get_boxs_non_overlap_ratio_x1y1x2y2`` call): with ``respect_flips=False`` on every case (flipped views
   included: that is the official flip-blind behaviour), with ``respect_flips=True`` on the cases where no
   view is flipped. On flipped cases the script also reports how much the flip fix changes.
3. **Selection.** The official draw (``np.random.choice(replace=False, p=r**power / sum)``: numpy's rejection
   rounds) and ours (exponential race over the whole batch, from a torch generator) use different random
   numbers in different ways, so their indices cannot be compared draw by draw. Their distributions are
   compared instead, on fixed boxes and chunks, over ``--draws`` repetitions: the first pick of each against
   the exact probabilities ``r**power / sum``, and the two inclusion frequencies (how often each cell is among
   the ``k`` picks) against each other, as z-scores. Neither side may ever pick a cell with ``r = 0``.

How to run (numpy, torch, torchvision; a CPU, about a minute)::

    git clone https://github.com/visresearch/aps /path/to/official-aps
    python tools/parity/aps_sampling.py --official /path/to/official-aps
    # and to refresh the fixture that tests/test_sampling.py compares against:
    python tools/parity/aps_sampling.py --official /path/to/official-aps \\
        --write-golden tests/fixtures/aps_sampling_parity.json

Nothing is patched in the official code: its sampling module needs only numpy, and its augmentation module
imports under current torchvision. The only wrapper records the return value of the official coverage
function (a ``mock.patch`` of the module attribute that calls the original). It exits with status 1 when a
difference exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.sampling import APSTransform, selective_sampling, uncovered_fractions  # noqa: E402

# float64 rounding of sums of up to ~100 terms of size <= 1: measured differences are ~1e-15.
COVERAGE_TOL = 1e-12
# Largest |z| allowed among ~256 cells per comparison (under the null the max of 256 |N(0,1)| is ~3.5 typically).
Z_TOL = 5.0
POWER = 3.0


def load_official(path: Path):
    sys.path.insert(0, str(path))
    try:
        sampling = importlib.import_module("asym_patch_sampling")
        augmentation = importlib.import_module("augmentation")
    finally:
        sys.path.remove(str(path))
    return sampling, augmentation


def official_commit(path: Path, fallback: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return fallback


def run_official_pair(sampling, box1, box2, grid: int, ratio: float, nsampling: int, seed: int):
    """The official chunks, selected cells and coverage fractions of one box pair (numpy seeded with ``seed``)."""
    recorded: list[np.ndarray] = []
    original = sampling.get_boxs_non_overlap_ratio_x1y1x2y2

    def recording(*args, **kwargs):
        ratios = original(*args, **kwargs)
        recorded.append(np.array(ratios, dtype=np.float64, copy=True))
        return ratios

    with mock.patch.object(sampling, "get_boxs_non_overlap_ratio_x1y1x2y2", recording):
        np.random.seed(seed)
        idxs1, idxs2 = sampling.get_random_patch_sequence_index_pair(list(box1), list(box2), grid, ratio,
                                                                     nsampling, POWER)
    return np.array(idxs1), np.array(idxs2), np.stack(recorded)


def meta_row(box, flipped: bool, image_hw) -> list[float]:
    return [float(v) for v in box] + [float(flipped), float(image_hw[0]), float(image_hw[1])]


def random_box(generator: torch.Generator, image_hw, scale) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box of an image of size image_hw (torchvision's draw, through a dummy tensor)."""
    from torchvision import transforms
    state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    try:
        return transforms.RandomResizedCrop.get_params(torch.empty(1, *image_hw), list(scale), [3 / 4, 4 / 3])
    finally:
        torch.set_rng_state(state)


def build_cases(count: int, seed: int) -> list[dict]:
    """Box pairs: hand-made geometries first, then random crops (CIFAR 32x32 G=16, ImageNet-like G=14)."""
    cases = [
        dict(name="identical, view 2 flipped", image=(32, 32), grid=16, box1=(0, 0, 32, 32), box2=(0, 0, 32, 32),
             flips=(False, True)),
        dict(name="identical, both flipped", image=(32, 32), grid=16, box1=(4, 6, 20, 24), box2=(4, 6, 20, 24),
             flips=(True, True)),
        dict(name="view 2 inside view 1", image=(32, 32), grid=16, box1=(0, 0, 32, 32), box2=(10, 7, 13, 15),
             flips=(False, False)),
        dict(name="view 1 inside view 2, view 1 flipped", image=(32, 32), grid=16, box1=(10, 7, 13, 15),
             box2=(0, 0, 32, 32), flips=(True, False)),
        dict(name="disjoint", image=(32, 32), grid=16, box1=(0, 0, 12, 14), box2=(18, 17, 14, 15),
             flips=(False, False)),
        dict(name="half-cell shift", image=(32, 32), grid=16, box1=(0, 0, 32, 30), box2=(1, 1, 30, 30),
             flips=(False, False)),
        dict(name="non-square image, G=14", image=(375, 500), grid=14, box1=(40, 100, 300, 260),
             box2=(0, 180, 250, 320), flips=(False, True)),
    ]
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        if index % 4 == 3:
            image, grid, scale = (375, 500), 14, (0.08, 1.0)
        else:
            image, grid, scale = (32, 32), 16, (0.15, 1.0)
        flips = tuple(bool(f) for f in (torch.rand(2, generator=generator) < 0.5))
        cases.append(dict(name=f"random {index}", image=image, grid=grid, box1=random_box(generator, image, scale),
                          box2=random_box(generator, image, scale), flips=flips))
    return cases


def compare_coverage(sampling, cases: list[dict], nsampling: int, ratio: float, seed: int) -> dict:
    """Official vs ours on the official chunks of every case; returns the numbers and the fixture cases."""
    worst_blind = worst_fixed_unflipped = 0.0
    changed, flipped_cases, change_sum, picks_of_zero = 0, 0, 0.0, 0
    for index, case in enumerate(cases):
        chunks, picks, official = run_official_pair(sampling, case["box1"], case["box2"], case["grid"], ratio,
                                                    nsampling, seed + index)
        meta1 = torch.tensor([meta_row(case["box1"], case["flips"][0], case["image"])], dtype=torch.float64)
        meta2 = torch.tensor([meta_row(case["box2"], case["flips"][1], case["image"])], dtype=torch.float64)
        chunk_tensor = torch.as_tensor(chunks, dtype=torch.long)[:, None, :]  # (nsampling, B=1, k)
        blind = uncovered_fractions(meta1, meta2, chunk_tensor, case["grid"], respect_flips=False)[:, 0].numpy()
        fixed = uncovered_fractions(meta1, meta2, chunk_tensor, case["grid"], respect_flips=True)[:, 0].numpy()
        worst_blind = max(worst_blind, float(np.abs(blind - official).max()))
        if any(case["flips"]):
            flipped_cases += 1
            difference = float(np.abs(fixed - official).mean())
            change_sum += difference
            changed += difference > 0
        else:
            worst_fixed_unflipped = max(worst_fixed_unflipped, float(np.abs(fixed - official).max()))
        picks_of_zero += int(sum((official[j][picks[j]] == 0).sum() for j in range(len(picks))))
        case.update(chunks=chunks.tolist(), official=official.tolist())
    return dict(worst_blind=worst_blind, worst_fixed_unflipped=worst_fixed_unflipped, flipped_cases=flipped_cases,
                changed=changed, mean_change=change_sum / max(flipped_cases, 1), picks_of_zero=picks_of_zero)


def compare_transforms(augmentation, trials: int, seed: int) -> tuple[int, int]:
    """Same torch seed: our APSTransform vs the official train_transforms called twice. Returns (views, boxes)
    that differ."""
    rng = np.random.default_rng(seed)
    ours = APSTransform()
    bad_views = bad_boxes = 0
    for trial in range(trials):
        image = Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
        torch.manual_seed(seed + trial)
        official = [augmentation.train_transforms(image) for _ in range(2)]
        torch.manual_seed(seed + trial)
        view1, view2, meta1, meta2 = ours(image)
        for (official_view, official_box), view, meta in zip(official, (view1, view2), (meta1, meta2)):
            bad_views += not torch.equal(official_view, view)
            bad_boxes += tuple(int(v) for v in meta[:4]) != tuple(official_box)
    return bad_views, bad_boxes


def first_pick_z(counts: np.ndarray, probabilities: np.ndarray, draws: int) -> float:
    """Max |z| of first-pick counts against exact probabilities: cells expected at least 5 times each on their
    own, the rarer ones pooled into one bin (where the normal approximation would not hold cell by cell)."""
    expected = draws * probabilities
    frequent = expected >= 5
    observed = np.append(counts[frequent], counts[~frequent].sum())
    expected = np.append(expected[frequent], expected[~frequent].sum())
    keep = (expected > 0) & (expected < draws)  # a bin holding every draw tests nothing
    if not keep.any():
        raise ValueError(f"{draws} draws are too few for a first-pick test: raise --draws")
    observed, expected = observed[keep], expected[keep]
    z = (observed - expected) / np.sqrt(expected * (1 - expected / draws))
    return float(np.abs(z).max())


def compare_distributions(sampling, cases: list[dict], draws: int, seed: int,
                          our_power: float = POWER) -> list[dict]:
    """Official np.random.choice vs our exponential race on fixed boxes and chunks (see the module docstring)."""
    results = []
    for case in cases:
        grid, chunk = case["grid"], np.array(case["chunks"][0])
        k, num_cells = len(chunk), grid * grid
        r = np.array(case["official"][0])
        weights = r ** POWER
        exact_first = weights / weights.sum()

        official_first, official_incl = np.zeros(num_cells), np.zeros(num_cells)
        np.random.seed(seed)
        for _ in range(draws):
            picks = sampling.sample_overlap_less_patches_with_box1(list(case["box1"]), list(case["box2"]), grid,
                                                                   chunk, POWER)
            official_first[picks[0]] += 1
            official_incl[picks] += 1
        uncovered = torch.as_tensor(r, dtype=torch.float64).expand(draws, num_cells)
        ours_picks = selective_sampling(uncovered, k, our_power, torch.Generator().manual_seed(seed))
        ours_first = torch.bincount(ours_picks[:, 0], minlength=num_cells).double().numpy()
        ours_incl = torch.bincount(ours_picks.flatten(), minlength=num_cells).double().numpy()

        pooled = (official_incl + ours_incl) / (2 * draws)
        populated = pooled * draws >= 10  # cells the normal approximation holds for
        se = np.sqrt(pooled * (1 - pooled) * 2 / draws)[populated]
        z_incl = (ours_incl - official_incl)[populated] / draws / se
        zero = r == 0
        results.append(dict(name=case["name"], k=k, candidates=int((~zero).sum()),
                            z_first_official=first_pick_z(official_first, exact_first, draws),
                            z_first_ours=first_pick_z(ours_first, exact_first, draws),
                            z_inclusion=float(np.abs(z_incl).max()), populated=int(populated.sum()),
                            zero_picks=int(official_incl[zero].sum() + ours_incl[zero].sum()),
                            max_inclusion_gap=float(np.abs(ours_incl - official_incl).max() / draws)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of github.com/visresearch/aps")
    parser.add_argument("--official-commit", default="unknown",
                        help="commit of the checkout, recorded in the fixture when PATH is not a git work tree")
    parser.add_argument("--cases", type=int, default=400, help="random box pairs besides the hand-made ones")
    parser.add_argument("--draws", type=int, default=4000, help="repetitions of the distribution comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-golden", type=Path, default=None, help="write the CPU test's fixture here")
    args = parser.parse_args(argv)

    sampling, augmentation = load_official(args.official)
    commit = official_commit(args.official, args.official_commit)
    ratio, nsampling = 0.25, 4
    ok = True
    print(f"official code: {args.official} (commit {commit})")

    bad_views, bad_boxes = compare_transforms(augmentation, 200, args.seed)
    print(f"[1] views and boxes, 200 images x 2 views, same torch seed: {bad_views} views and {bad_boxes} boxes "
          f"differ")
    ok &= bad_views == 0 and bad_boxes == 0

    cases = build_cases(args.cases, args.seed)
    coverage = compare_coverage(sampling, cases, nsampling, ratio, args.seed)
    print(f"[2] coverage fractions, {len(cases)} box pairs x {nsampling} official chunks:")
    print(f"    respect_flips=False vs official, all cases:          max |diff| = {coverage['worst_blind']:.3g}")
    print(f"    respect_flips=True  vs official, unflipped cases:    max |diff| = "
          f"{coverage['worst_fixed_unflipped']:.3g}")
    print(f"    flip fix on the {coverage['flipped_cases']} cases with a flipped view: changes "
          f"{coverage['changed']} of them, mean |change| of r per cell {coverage['mean_change']:.3f}")
    print(f"    official picks of a cell with r = 0: {coverage['picks_of_zero']}")
    ok &= coverage["worst_blind"] <= COVERAGE_TOL and coverage["worst_fixed_unflipped"] <= COVERAGE_TOL
    ok &= coverage["picks_of_zero"] == 0

    chosen = [cases[0], cases[2], cases[5], cases[7], cases[8]]
    print(f"[3] selection distributions, {args.draws} draws per case (first pick vs exact r^3/sum; "
          f"inclusion frequency ours vs official; max |z| over the cells):")
    for row in compare_distributions(sampling, chosen, args.draws, args.seed):
        print(f"    {row['name']:<38} k={row['k']} candidates={row['candidates']:>3}  first pick: official "
              f"{row['z_first_official']:.2f}, ours {row['z_first_ours']:.2f}; inclusion {row['z_inclusion']:.2f} "
              f"({row['populated']} cells; max gap {row['max_inclusion_gap']:.4f}); picks of r=0: {row['zero_picks']}")
        ok &= max(row["z_first_official"], row["z_first_ours"], row["z_inclusion"]) <= Z_TOL
        ok &= row["zero_picks"] == 0

    # Control: the same comparison with our power set to 2 must fail, or the test above could not.
    control = compare_distributions(sampling, chosen[-1:], args.draws, args.seed, our_power=2.0)[0]
    print(f"    control, ours with power 2 instead of 3 ({control['name']}): first pick "
          f"{control['z_first_ours']:.1f}, inclusion {control['z_inclusion']:.1f} (must exceed {Z_TOL})")
    ok &= min(control["z_first_ours"], control["z_inclusion"]) > Z_TOL

    if args.write_golden is not None:
        # A few hand-made cases and random ones with flips; two chunks each keep the file small.
        keep = cases[:7] + [c for c in cases[7:] if any(c["flips"])][:4] + [c for c in cases[7:]
                                                                              if not any(c["flips"])][:2]
        golden = dict(
            about=("Coverage fractions r_c of the OFFICIAL APS code (github.com/visresearch/aps, "
                   "asym_patch_sampling.sample_overlap_less_patches_with_box1), written by "
                   "tools/parity/aps_sampling.py; checked by tests/test_sampling.py. Boxes are (top, left, height, "
                   "width) in original-image pixels; flips are (view 1, view 2) and are ignored by the official "
                   "code; official[j] holds the fractions of the G*G view-2 cells for chunks[j] of view 1."),
            official_commit=commit, threshold=1e-6,
            cases=[dict(name=c["name"], image=list(c["image"]), grid=c["grid"], box1=list(c["box1"]),
                        box2=list(c["box2"]), flips=list(c["flips"]), chunks=c["chunks"][:2],
                        official=c["official"][:2]) for c in keep])
        args.write_golden.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
        print(f"wrote {args.write_golden} ({len(keep)} cases)")

    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
