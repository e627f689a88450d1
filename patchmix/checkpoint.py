"""Atomic checkpoints that ``torch.load(..., weights_only=True)`` can read, and RNG capture for exact resume.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed over the old
one (``os.replace`` is atomic on POSIX), so ``checkpoint.pth`` is always either the previous or the new
complete file, whatever moment a job is killed at. It holds only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "CheckpointError",
           "prepare_run_dir", "LATEST_NAME", "FORMAT_VERSION"]

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
    """The random state a training step depends on (torch CPU/CUDA and named generators)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in (generators or {}).items():
        state[f"generator/{name}"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    for name, generator in (generators or {}).items():
        key = f"generator/{name}"
        if key in state:
            generator.set_state(state[key])


def prepare_run_dir(cfg: Any, is_main: bool, run_only_keys: tuple[str, ...], resumable: bool = True
                    ) -> tuple[Path, Path | None]:
    """Create ``cfg.output_dir``, pick the checkpoint to resume from, and save ``config.json``.

    Resumes from ``cfg.resume`` or, when empty, from ``OUTPUT_DIR/checkpoint.pth`` if it exists. A directory
    holding a run whose config differs in anything but ``run_only_keys`` is refused (unless
    ``cfg.allow_config_change``): continuing it would silently mix two experiments.
    """
    from patchmix.config import ConfigError, config_differences, config_to_dict, save_config
    from patchmix.distributed import barrier

    output_dir = Path(cfg.output_dir)
    resume: Path | None = None
    if resumable:
        resume = Path(cfg.resume) if cfg.resume else None
        if resume is None and (output_dir / LATEST_NAME).is_file():
            resume = output_dir / LATEST_NAME
        if resume is not None and not resume.is_file():
            raise ConfigError(f"--resume {resume}: no such file.")
        saved_path = output_dir / "config.json"
        if saved_path.is_file() and (output_dir / LATEST_NAME).is_file():
            saved = json.loads(saved_path.read_text())
            differences = config_differences(saved, config_to_dict(cfg), ignore=run_only_keys)
            if differences and not cfg.allow_config_change:
                listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differences.items())[:8])
                raise ConfigError(f"{output_dir} holds a run with a different config ({listed}). Use another "
                                  f"--output-dir, or pass --allow-config-change to continue that run anyway.")
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.json")
    barrier()
    return output_dir, resume
