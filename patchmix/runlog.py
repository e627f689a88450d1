"""Where a run reports: the progress bar, TensorBoard scalars and ``log.txt``, opened and closed one way.

Only the main process (rank 0) writes; on the others a :class:`RunLogger` does nothing, so callers never test
the rank themselves. ``log.txt`` holds one JSON object per line (one per epoch), TensorBoard the per-step scalars.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar", "RunLogger"]


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar on stdout: live in a terminal, an update every 30 s when written to a log file."""
    if not sys.stdout.isatty():
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("maxinterval", 60.0)
    return tqdm(file=sys.stdout, dynamic_ncols=True, **kwargs)


class RunLogger:
    """Progress bar + TensorBoard + ``log.txt`` of one run (a context manager: closed on errors too).

    Args:
        output_dir: the run's directory (``tensorboard/`` and ``log.txt`` go there).
        enabled: False on every process but the main one.
        total / initial: steps of the whole run and steps already done (a resumed run).
        desc: the progress bar's label.
    """

    def __init__(self, output_dir: Path, enabled: bool, total: int, initial: int = 0, desc: str = "") -> None:
        self.enabled = enabled
        self.log_path = output_dir / "log.txt"
        self.writer = self.progress = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only where it writes
            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            self.progress = progress_bar(total=total, initial=initial, desc=desc)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train/") -> None:
        """TensorBoard scalars ``PREFIX + name`` at ``step``."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(prefix + name, value, step)

    def advance(self, **postfix: str) -> None:
        """One step done: move the progress bar and show ``postfix`` (e.g. the loss) next to it."""
        if self.progress is not None:
            self.progress.set_postfix(refresh=False, **postfix)
            self.progress.update(1)

    def epoch(self, record: dict[str, Any], line: str) -> None:
        """Append ``record`` to ``log.txt`` and print ``line`` above the progress bar."""
        if not self.enabled:
            return
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
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
