"""Where a run reports: the progress bar, TensorBoard, ``log.txt`` and (optionally) Weights & Biases.

Every number a run logs passes through :class:`RunLogger`, which writes it to each sink, so the sinks never
disagree and the training loops know none of them. Only the main process (rank 0) writes; on the others a
:class:`RunLogger` does nothing, so callers never test the rank themselves. ``log.txt`` holds one JSON object per
line (one per epoch); TensorBoard and W&B the per-step scalars (``train/*`` at the global step) and the numbers of
every epoch (``epoch/*`` at the epoch).

W&B (``--wandb PROJECT``) is imported only when asked for. Its run id is kept in ``OUTPUT_DIR/wandb_id.txt``, so
a resumed run continues the same W&B run; ``WANDB_MODE=offline`` writes it locally for ``wandb sync``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from patchmix.config import ConfigError, config_to_dict

__all__ = ["progress_bar", "RunLogger", "WandbRun", "check_wandb", "publish_results", "WANDB_ID_NAME"]

WANDB_ID_NAME = "wandb_id.txt"


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar on stdout: live in a terminal, an update every 30 s when written to a log file."""
    if not sys.stdout.isatty():
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("maxinterval", 60.0)
    return tqdm(file=sys.stdout, dynamic_ncols=True, **kwargs)


def check_wandb(project: str) -> None:
    """Fail at the start of a run, on every process, when ``--wandb`` is given but wandb is not installed (found
    without importing it)."""
    if project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"--wandb {project} needs the wandb package: pip install 'patchmix[wandb]' (or pip "
                          f"install wandb), or drop --wandb.")


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) dict as ``prefix + a/b/c`` keys (booleans, strings and lists are left out)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix + str(key)] = float(value)
    return flat


class WandbRun:
    """One Weights & Biases run of an output directory: created on the first start, continued on every later one.

    The id is written to ``OUTPUT_DIR/wandb_id.txt`` before the run starts, so even a job killed during its first
    minutes is continued by the next one. Files go to ``OUTPUT_DIR/wandb/`` unless ``WANDB_DIR`` says otherwise.
    Steps are logged against the run's own axes (``global_step``, ``epoch``), not W&B's internal step, so the
    steps a resumed run repeats after a crash are recorded instead of dropped as going back in time.
    """

    def __init__(self, project: str, output_dir: Path, config: dict[str, Any], job_type: str) -> None:
        check_wandb(project)
        import wandb  # only here: runs without --wandb never import it

        id_path = output_dir / WANDB_ID_NAME
        if id_path.is_file():
            run_id = id_path.read_text().strip()
        else:
            run_id = secrets.token_hex(6)
            output_dir.mkdir(parents=True, exist_ok=True)
            id_path.write_text(run_id + "\n")
        try:
            self.run = wandb.init(project=project, id=run_id, resume="allow", config=config, job_type=job_type,
                                  name=output_dir.resolve().name,
                                  dir=None if os.environ.get("WANDB_DIR") else str(output_dir))
        except Exception as error:  # wandb raises many kinds (no login, no network, bad project name)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"--wandb {project}: W&B could not start ({first}). Log in with `wandb login`, or set "
                              f"WANDB_MODE=offline to write the run locally and `wandb sync` it later.") from error
        self.run.define_metric("global_step")
        self.run.define_metric("train/*", step_metric="global_step")
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")

    def log(self, values: dict[str, float]) -> None:
        self.run.log(values)

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def finish(self) -> None:
        self.run.finish()


def publish_results(cfg: Any, output_dir: Path, results: dict[str, Any], enabled: bool, job_type: str) -> None:
    """The numbers of a run's ``results.json`` as the summary of its W&B run (with ``--wandb``; else nothing)."""
    if not (enabled and getattr(cfg, "wandb", "")):
        return
    sink = WandbRun(cfg.wandb, output_dir, config_to_dict(cfg), job_type)
    try:
        sink.summary(_numbers(results))
    finally:
        sink.finish()


class RunLogger:
    """Progress bar + TensorBoard + ``log.txt`` (+ W&B) of one run (a context manager: closed on errors too).

    Args:
        output_dir: the run's directory (``tensorboard/``, ``log.txt`` and ``wandb_id.txt`` go there).
        enabled: False on every process but the main one.
        total / initial: steps of the whole run and steps already done (a resumed run).
        desc: the progress bar's label (and the W&B job type).
        wandb_project: log to this W&B project too (empty: no W&B).
        config: the resolved configuration, recorded by W&B.
    """

    def __init__(self, output_dir: Path, enabled: bool, total: int, initial: int = 0, desc: str = "",
                 wandb_project: str = "", config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.log_path = output_dir / "log.txt"
        self.writer = self.progress = self.wandb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only where it writes
            if wandb_project:
                self.wandb = WandbRun(wandb_project, output_dir, dict(config or {}), desc or "train")
            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            self.progress = progress_bar(total=total, initial=initial, desc=desc)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train/", axis: str = "global_step") -> None:
        """Scalars ``PREFIX + name`` at ``step`` (of ``axis`` in W&B), in TensorBoard and W&B."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(prefix + name, value, step)
        if self.wandb is not None:
            self.wandb.log({axis: step, **{prefix + name: value for name, value in values.items()}})

    def advance(self, **postfix: str) -> None:
        """One step done: move the progress bar and show ``postfix`` (e.g. the loss) next to it."""
        if self.progress is not None:
            self.progress.set_postfix(refresh=False, **postfix)
            self.progress.update(1)

    def epoch(self, record: dict[str, Any], line: str) -> None:
        """Append ``record`` to ``log.txt``, its numbers to TensorBoard and W&B (``epoch/*`` at its ``epoch``),
        and print ``line`` above the progress bar."""
        if not self.enabled:
            return
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in _numbers(record).items() if k != "epoch" and math.isfinite(v)}
        self.scalars(int(record["epoch"]), numbers, prefix="epoch/", axis="epoch")
        self.print(line)

    def print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.write(line)
        elif self.enabled:
            print(line)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
