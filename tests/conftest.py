"""Shared fixtures: the repository on sys.path, a small Fashion-MNIST-format dataset, tiny configs."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(data)


def make_fashion_like(directory: Path, train: int = 96, test: int = 48, size: int = 28, seed: int = 0) -> Path:
    """A learnable toy set in Fashion-MNIST's file format: each of 4 classes is a bright bar at its own place."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 4
        images = rng.integers(0, 60, size=(count, size, size))
        for i, label in enumerate(labels):
            band = slice(label * size // 4, (label + 1) * size // 4)
            images[i, band, :] += 180
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return make_fashion_like(tmp_path_factory.mktemp("toy_fashion"))


# A pretraining run small enough for a unit test: 16-px images, 4-px patches, a 2-block 32-d ViT.
TINY_PRETRAIN = ["--config", "demo", "--dataset", "fashion_mnist", "--img-size", "16", "--patch-size", "4",
                 "--arch", "vit_tiny",
                 "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--hidden-dim", "64", "--out-dim", "32",
                 "--batch-size", "16", "--epochs", "2", "--warmup-epochs", "1", "--num-workers", "0",
                 "--device", "cpu", "--no-knn-eval", "--log-freq", "1", "--save-freq", "1", "--train-subset", "64"]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, toy_data) -> Path:
    """A real checkpoint of main_pretrain.py (one tiny epoch), shared by the tests that only read it."""
    import main_pretrain

    out = tmp_path_factory.mktemp("pretrain")
    assert main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out),
                                               "--epochs", "1", "--save-freq", "0"]) == 0
    return out / "checkpoint.pth"


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def assert_run_header(stdout: str, output_dir: Path) -> None:
    """The header every script prints: the versions line (code revision, library versions, device), then the
    resolved configuration of ``OUTPUT_DIR/config.json``, one sorted ``key: value`` per line."""
    import json

    from patchmix.rundir import git_revision

    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("patchmix "))
    versions = lines[start]
    assert versions.startswith(f"patchmix {git_revision()} | torch ") and "| timm " in versions
    assert "| torchvision " in versions and " process(es)" in versions
    assert lines[start + 1] == "config:"
    saved = json.loads((output_dir / "config.json").read_text())
    shown = lines[start + 2:start + 2 + len(saved)]
    assert [line.split(":")[0].strip() for line in shown] == sorted(saved)
    assert all(line == f"  {key}: {saved[key]}" for line, key in zip(shown, sorted(saved))
               if not isinstance(saved[key], list))
