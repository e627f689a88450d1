"""Speed of the APS sampling: our vectorised ``aps_sampling`` against a plain per-image loop.

The loop follows the official algorithm (github.com/visresearch/aps, ``asym_patch_sampling.py``), written here
independently: per image, ``np.random.shuffle`` of the cells cut into chunks; per chunk, for every view-1 cell
of the chunk, the view-2 cells its box can touch, their overlap subtracted from ``r`` one by one; then
``np.random.choice(replace=False, p=r**power / sum)``. It maps boxes like the official code (flips ignored),
which costs the same as mapping them correctly. The official code runs it per image in its data-loader
workers; ours runs once per batch in the training step.

Both are timed on the same boxes (random ``RandomResizedCrop`` boxes of 32x32 images, scale (0.15, 1), random
flips), in ``--rounds`` interleaved rounds (vectorised, loop, vectorised, ...), and the median and range of
the per-image cost of each are reported. The vectorised side runs on one torch thread by default, so that both
sides use one CPU core (as one official data-loader worker does)::

    python tools/bench_sampling.py                       # official CIFAR setting: G=16, ratio 0.25, 4 chunks, B=512
    python tools/bench_sampling.py --device cuda         # the vectorised side on a GPU (the loop stays on the CPU)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from patchmix.sampling import aps_sampling, cells_per_chunk  # noqa: E402


def loop_uncovered(box1, box2, chunk, grid: int, threshold: float = 1e-6) -> np.ndarray:
    """r_c of the view-2 cells for one chunk, the official way: a Python loop over chunk cells and the view-2
    cells each can touch, in pixels relative to view 2's top-left corner."""
    top1, left1, height1, width1 = box1
    top2, left2, height2, width2 = box2
    cell_h1, cell_w1 = height1 / grid, width1 / grid
    cell_h2, cell_w2 = height2 / grid, width2 / grid
    r = np.ones(grid * grid)
    for index in chunk:
        row, col = divmod(int(index), grid)
        y0, x0 = top1 - top2 + row * cell_h1, left1 - left2 + col * cell_w1
        y1, x1 = y0 + cell_h1, x0 + cell_w1
        first_row, last_row = max(0, int(y0 / cell_h2)), min(grid - 1, int(y1 / cell_h2))
        first_col, last_col = max(0, int(x0 / cell_w2)), min(grid - 1, int(x1 / cell_w2))
        for row2 in range(first_row, last_row + 1):
            cy0 = row2 * cell_h2
            dy = min(y1, cy0 + cell_h2) - max(y0, cy0)
            if dy <= 0:
                continue
            for col2 in range(first_col, last_col + 1):
                cx0 = col2 * cell_w2
                dx = min(x1, cx0 + cell_w2) - max(x0, cx0)
                if dx <= 0:
                    continue
                cell = row2 * grid + col2
                r[cell] -= dy * dx / (cell_h2 * cell_w2)
                if r[cell] < threshold:
                    r[cell] = 0.0
    return r


def loop_sampling(boxes1: np.ndarray, boxes2: np.ndarray, grid: int, ratio: float, nsampling: int,
                  power: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-image loop over a batch: ``(B, nsampling, k)`` indices of view 1 and view 2."""
    k = int(grid * grid * ratio)
    view1, view2 = [], []
    for box1, box2 in zip(boxes1, boxes2):
        cells = np.arange(grid * grid)
        np.random.shuffle(cells)
        chunks = [cells[j * k:(j + 1) * k] for j in range(nsampling)]
        picks = []
        for chunk in chunks:
            weights = loop_uncovered(box1, box2, chunk, grid) ** power
            picks.append(np.random.choice(grid * grid, k, replace=False, p=weights / weights.sum()))
        view1.append(chunks)
        view2.append(picks)
    return np.array(view1), np.array(view2)


def random_metas(batch: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    dummy = torch.empty(1, image_size, image_size)
    metas = []
    for _ in range(2):
        rows = []
        for _ in range(batch):
            box = transforms.RandomResizedCrop.get_params(dummy, [0.15, 1.0], [3 / 4, 4 / 3])
            rows.append([*box, float(torch.rand(1) < 0.5), image_size, image_size])
        metas.append(torch.tensor(rows, dtype=torch.float32))
    return metas[0], metas[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--nsampling", type=int, default=4)
    parser.add_argument("--power", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vectorised-calls", type=int, default=20, help="calls per round (the loop: one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the vectorised side (default 1: the loop uses one core too)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    meta1, meta2 = random_metas(args.batch_size, 32, args.seed)
    boxes1, boxes2 = meta1[:, :4].double().numpy(), meta2[:, :4].double().numpy()
    meta1, meta2 = meta1.to(device), meta2.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    np.random.seed(args.seed)
    k = cells_per_chunk(args.grid, args.ratio)

    def vectorised() -> None:
        sample = aps_sampling(meta1, meta2, args.grid, args.ratio, args.nsampling, args.power,
                              generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert sample.view2.shape == (args.nsampling, args.batch_size, k)

    vectorised()  # warm-up
    loop_sampling(boxes1[:8], boxes2[:8], args.grid, args.ratio, args.nsampling, args.power)
    per_image = {"vectorised": [], "loop": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.vectorised_calls):
            vectorised()
        per_image["vectorised"].append((time.perf_counter() - start) / args.vectorised_calls / args.batch_size)
        start = time.perf_counter()
        loop_sampling(boxes1, boxes2, args.grid, args.ratio, args.nsampling, args.power)
        per_image["loop"].append((time.perf_counter() - start) / args.batch_size)

    print(f"APS sampling, G={args.grid}, ratio {args.ratio} (k={k}), {args.nsampling} chunks, batch "
          f"{args.batch_size}, {args.rounds} interleaved rounds; vectorised on {device} "
          f"({torch.get_num_threads()} torch threads), loop on the CPU; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    medians = {}
    for name, values in per_image.items():
        medians[name] = statistics.median(values)
        print(f"  {name:<10}  median {medians[name] * 1e6:9.1f} us/image  (rounds {min(values) * 1e6:.1f}-"
              f"{max(values) * 1e6:.1f}); {medians[name] * args.batch_size * 1e3:.1f} ms per batch")
    print(f"  loop / vectorised: {medians['loop'] / medians['vectorised']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
