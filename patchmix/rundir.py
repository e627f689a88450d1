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
import torchvision

from patchmix.checkpoint import LATEST_NAME
from patchmix.config import ConfigError, config_differences, config_to_dict, save_config
from patchmix.distributed import DistInfo, barrier
from patchmix.runlog import check_wandb

__all__ = ["prepare_run_dir", "keep_numbered_copy", "write_results", "git_revision", "versions_line",
           "run_header"]


def prepare_run_dir(cfg: Any, is_main: bool, resumable: bool = True) -> tuple[Path, Path | None]:
    """Create ``cfg.output_dir``, pick the checkpoint to resume from, save ``config.json``.

    Resumes from ``cfg.resume`` or, when empty, from ``OUTPUT_DIR/checkpoint.pth`` if it exists. A missing
    wandb package for ``--wandb`` is reported here, on every process, before any work.
    """
    check_wandb(getattr(cfg, "wandb", ""))
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
    """The short commit hash of the code, with ``-dirty`` when files differ from it (a run of uncommitted code
    cannot be reproduced from the hash alone); ``unknown`` outside a git checkout."""
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude", "*"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions_line(env: DistInfo) -> str:
    """``patchmix <rev> | torch .. | torchvision .. | timm .. | python .. | device`` for the header of every run;
    on a GPU the device names its model and the CUDA and cuDNN versions."""
    device = str(env.device)
    if env.device.type == "cuda":
        device += (f" ({torch.cuda.get_device_name(env.device)}, CUDA {torch.version.cuda}, cuDNN "
                   f"{torch.backends.cudnn.version()})")
    return (f"patchmix {git_revision()} | torch {torch.__version__} | torchvision {torchvision.__version__} | timm "
            f"{timm.__version__} | python {platform.python_version()} | {device} x {env.world_size} process(es)")


def run_header(cfg: Any, env: DistInfo) -> str:
    """What every script prints first: the versions line and the resolved configuration, one sorted
    ``key: value`` per line, so a log file alone says what ran and how."""
    settings = config_to_dict(cfg)
    return "\n".join([versions_line(env), "config:"] + [f"  {key}: {settings[key]}" for key in sorted(settings)])
