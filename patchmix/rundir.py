"""The output directory of a run: ``config.json``, which checkpoint to resume, numbered copies, results, header.

Every script writes into ``--output-dir``. Re-running a command with the same directory resumes it, and a
directory that holds a run with another configuration is refused (continuing it would silently mix two
experiments), except for run-only settings (output paths, workers, logging) and with ``--allow-config-change``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import timm
import torch

from patchmix.checkpoint import LATEST_NAME
from patchmix.config import ConfigError, config_differences, save_config
from patchmix.distributed import DistInfo, barrier

__all__ = ["prepare_run_dir", "keep_numbered_copy", "write_results", "git_revision", "versions_line"]


def prepare_run_dir(cfg: Any, is_main: bool, resumable: bool = True) -> tuple[Path, Path | None]:
    """Create ``cfg.output_dir``, pick the checkpoint to resume from, save ``config.json``.

    Resumes from ``cfg.resume`` or, when empty, from ``OUTPUT_DIR/checkpoint.pth`` if it exists.
    """
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
            differences = config_differences(json.loads(saved_path.read_text()), cfg)
            if differences and not cfg.allow_config_change:
                listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differences.items())[:8])
                raise ConfigError(f"{output_dir} holds a run with a different config ({listed}). Use another "
                                  f"--output-dir, or pass --allow-config-change to continue that run anyway.")
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.json")
    barrier()
    return output_dir, resume


def keep_numbered_copy(latest: Path, epoch: int, save_freq: int, epochs: int) -> None:
    """Hard-link ``checkpoint.pth`` as ``checkpoint_EEEE.pth`` every ``save_freq`` epochs and at the end.

    A hard link costs no disk; the next atomic save replaces ``checkpoint.pth`` by a new file and leaves the
    linked one intact. Falls back to a copy on file systems without hard links.
    """
    if not (save_freq > 0 and epoch % save_freq == 0) and epoch != epochs:
        return
    numbered = latest.with_name(f"checkpoint_{epoch:04d}.pth")
    if numbered.exists():
        numbered.unlink()
    try:
        os.link(latest, numbered)
    except OSError:
        shutil.copy2(latest, numbered)


def write_results(output_dir: Path, results: dict[str, Any]) -> Path:
    """``results.json``, written atomically."""
    path = output_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    return path


def git_revision() -> str:
    """The short commit hash of the code, or ``unknown`` outside a git checkout."""
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions_line(env: DistInfo) -> str:
    """``patchmix <rev> | torch .. | timm .. | python .. | device`` for the header of every run."""
    device = str(env.device)
    if env.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(env.device)})"
    return (f"patchmix {git_revision()} | torch {torch.__version__} | timm {timm.__version__} | python "
            f"{platform.python_version()} | {device} x {env.world_size} process(es)")
