"""Checkpoints written before the engine redesign still load and resume, to the same final weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import main_pretrain

FIXTURE = Path(__file__).parent / "fixtures" / "pre_engine_run"


def test_a_mid_epoch_checkpoint_of_the_old_code_resumes_to_the_old_final_weights(tmp_path, toy_data, capsys):
    """The fixture is a run of the old code stopped after 3 steps; its finished run's per-tensor sums were
    recorded by the old code too. Resuming with this code must land on the same weights."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    out = tmp_path / "run"
    shutil.copytree(FIXTURE, out)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["step_in_epoch"] == 3
    # The old command had no --config (the demo recipe was the silent default), and fused the backbone passes
    # (now the default on GPUs only): both explicit, so the same floating-point operations run.
    assert main_pretrain.main(["--config", "demo", "--fuse-backbone", *expected["flags"], "--data-path", str(toy_data),
                              "--output-dir", str(out)]) == 0
    assert "Resumed from" in capsys.readouterr().out
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (expected["final_epoch"], expected["final_global_step"])
    sums = {k: float(v.double().sum()) for k, v in state["model"].items() if v.is_floating_point()}
    assert sums.keys() == expected["final_model_sums"].keys()
    for key, value in expected["final_model_sums"].items():
        assert sums[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
