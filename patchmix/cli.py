"""What every entry script does around its work: parse the config, start the processes, report errors in one line.

A problem the user can fix (a config, data, weights or checkpoint problem, a non-finite loss) is printed as
``error: <one line that says what to do>`` on stderr with exit status 2, never as a traceback, on every
process. The process group is shut down whatever happens.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from patchmix.checkpoint import CheckpointError
from patchmix.config import ConfigError, parse_config
from patchmix.data import DataError
from patchmix.distributed import DistInfo, cleanup, init_distributed
from patchmix.engine import NonFiniteLossError
from patchmix.weights import WeightsError

__all__ = ["USER_ERRORS", "run_script"]

USER_ERRORS = (ConfigError, DataError, WeightsError, CheckpointError, NonFiniteLossError)


def run_script(resolve: Any, argv: list[str] | None, kind: str, description: str,
               body: Callable[[Any, DistInfo], Any]) -> int:
    """Parse ``argv`` into the config of ``resolve`` (recipes of ``config/<kind>/``), start the processes, run
    ``body(cfg, env)``; return the exit status (0, or 2 after a one-line error)."""
    try:
        cfg = parse_config(resolve, argv, kind, description)
        env = init_distributed(cfg.device, cfg.dist_timeout_minutes)
        body(cfg, env)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0
