"""Atomic checkpoints that ``torch.load(..., weights_only=True)`` can read, and RNG capture for exact resume.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over the old
one (``os.replace`` is atomic on POSIX), so ``checkpoint.pth`` is always either the previous or the new
complete file, whatever moment a job is killed at. It holds only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "CheckpointError",
           "LATEST_NAME", "FORMAT_VERSION"]

LATEST_NAME = "checkpoint.pth"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not fit; the message says which file and what to do."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically to ``path`` (temporary file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code from the file is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(error).__name__}: {error}). The file is "
                              f"truncated or corrupt, or not a PyTorch checkpoint; delete it to start over, or "
                              f"pass an older numbered copy with --resume.") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict.")
    return state


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The random state a training step depends on: torch CPU/CUDA, numpy and Python's ``random`` (timm's
    Mixup and RandAugment draw from those) and the named generators. Plain tensors, numbers and lists only."""
    keys, position, has_gauss, cached = np.random.get_state()[1:]
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                             "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in (generators or {}).items():
        state[f"generator/{name}"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what :func:`capture_rng` saved (states a checkpoint lacks are left as they are)."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state(("MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                             saved["cached_gaussian"]))
    if "python" in state:
        saved = state["python"]
        random.setstate((saved["version"], tuple(saved["state"]), saved["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    for name, generator in (generators or {}).items():
        key = f"generator/{name}"
        if key in state:
            generator.set_state(state[key])
