"""Real multi-process runs with torchrun on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_PRETRAIN

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_train_in_lockstep_and_checkpoint(tmp_path, toy_data):
    out = tmp_path / "ddp"
    result = torchrun("--standalone", "--nproc_per_node=2", "main_pretrain.py", *TINY_PRETRAIN,
                      "--data-path", str(toy_data), "--output-dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x 2 process(es)" in result.stdout
    state = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    # 64 images, global batch 16 -> 8 per process, 4 steps per epoch, 2 epochs
    assert state["global_step"] == 8 and len(state["rng"]) == 2
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["world_size"] for line in lines] == [2, 2]
    assert all(line["replicas_in_sync"] for line in lines)
    # SyncBatchNorm in the heads is saved as plain BatchNorm state (same keys as one process)
    assert "base_encoder.head.1.running_mean" in state["model"]
