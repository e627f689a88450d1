"""The SLURM launcher (patchmix.slurm): flag checks, completion, and real jobs on submitit's local executor.

The local executor runs the job exactly as SLURM would on one node (one submitit task process per rank, the
pickled job, submitit's pre-emption signal handler, its requeue), on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_PRETRAIN, children

from patchmix import slurm
from patchmix.checkpoint import load_checkpoint, save_checkpoint

# 256 toy images, batch 16: 16 steps per epoch; 6 epochs, so that a pre-emption lands mid-run.
LONG_RUN = TINY_PRETRAIN + ["--train-subset", "256", "--epochs", "6"]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_bad_launcher_input_is_one_error_line(tmp_path, capsys):
    out = ["--config", "demo", "--output-dir", str(tmp_path / "run")]
    assert slurm.main(["--script", "pretrian", *out]) == 2
    assert error_lines(capsys) == ["error: unknown --script 'pretrian'; choose one of pretrain, knn, linear, "
                                   "finetune, video_segmentation. Did you mean 'pretrain'?"]
    assert slurm.main(["--script", "pretrain", *out, "--config", "no_such_recipe"]) == 2
    [line] = error_lines(capsys)
    assert line.startswith("error: config 'no_such_recipe' not found in config/pretrain/")
    assert slurm.main(["--script", "knn", "--nodes", "0", *out]) == 2
    assert error_lines(capsys) == ["error: --nodes must be at least 1."]
    assert not (tmp_path / "run").exists()  # nothing is created for a command that is refused


def test_local_executor_refuses_several_nodes_and_bad_sbatch_options(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = ["--config", "demo", "--output-dir", str(tmp_path / "run")]
    assert slurm.main(["--script", "pretrain", "--executor", "local", "--nodes", "2", *out]) == 2
    assert error_lines(capsys) == ["error: the local executor runs on this machine only: use --nodes 1, or "
                                   "--executor slurm."]
    assert slurm.main(["--script", "pretrain", "--slurm-option=--exclusive", *out]) == 2
    [line] = error_lines(capsys)
    assert line.startswith("error: --slurm-option '--exclusive': write KEY=VALUE or KEY")


def test_without_submitit_the_launcher_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    assert slurm.main(["--script", "pretrain", "--config", "demo", "--output-dir", str(tmp_path / "run")]) == 2
    [line] = error_lines(capsys)
    assert line.startswith("error: the SLURM launcher needs submitit: pip install submitit")


def test_a_run_is_complete_only_at_its_end(tmp_path):
    stopped = save_checkpoint({"epoch": 2, "step_in_epoch": 5}, tmp_path / "stopped" / "checkpoint.pth")
    assert not slurm.run_complete("pretrain", stopped.parent, epochs=3, started_at=0.0)
    boundary = save_checkpoint({"epoch": 2, "step_in_epoch": 0}, tmp_path / "boundary" / "checkpoint.pth")
    assert not slurm.run_complete("pretrain", boundary.parent, epochs=3, started_at=0.0)
    done = save_checkpoint({"epoch": 3, "step_in_epoch": 0}, tmp_path / "done" / "checkpoint.pth")
    assert slurm.run_complete("pretrain", done.parent, epochs=3, started_at=time.time())  # mtime is irrelevant
    assert not slurm.run_complete("pretrain", tmp_path / "missing", epochs=3, started_at=0.0)
    results = tmp_path / "linear" / "results.json"
    results.parent.mkdir()
    results.write_text("{}")
    assert slurm.run_complete("linear", results.parent, epochs=3, started_at=time.time() - 5)
    assert not slurm.run_complete("linear", results.parent, epochs=3, started_at=time.time() + 60)  # an old file


# ------------------------------------------------------------------------------------------------------------
# Real jobs


def wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def log_lines(out: Path) -> int:
    path = out / "log.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.faults
def test_preempted_job_is_requeued_and_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from conftest import make_fashion_like
    data = make_fashion_like(tmp_path / "data", train=256, test=16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread: bit-reproducible runs
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "main_pretrain.py", *LONG_RUN, "--data-path", str(data), "--output-dir",
                    str(reference)], cwd=REPO_ROOT, env=dict(os.environ), check=True, capture_output=True,
                   timeout=300)

    out = tmp_path / "job"
    job = slurm.submit("pretrain", [*LONG_RUN, "--data-path", str(data), "--output-dir", str(out)],
                       slurm.Resources(timeout_min=10, signal_delay_s=60), executor="local")
    assert isinstance(job, submitit.local.local.LocalJob)
    wait_for(lambda: log_lines(out) >= 1 or job.done())
    assert not job.done(), job.stdout()
    [task] = children(job._process.pid)  # the task process the local executor's controller started
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before a time limit (scancel --signal USR2 does too)
    result = job.result()
    log = job.stdout()
    assert "pre-emption or time limit: stopping the training" in log and "Requeued job" in log
    assert "Stopped (received SIGTERM)" in log and "Resumed from" in log
    assert result == {"output_dir": str(out), "results": None}  # --no-knn-eval: no knn.json
    final, straight = load_checkpoint(out / "checkpoint.pth"), load_checkpoint(reference / "checkpoint.pth")
    assert (final["epoch"], final["step_in_epoch"]) == (6, 0)
    assert final["model"].keys() == straight["model"].keys()
    for key in final["model"]:
        assert torch.equal(final["model"][key], straight["model"][key]), key
    assert (out / "slurm").is_dir()  # submitit's files live in the run directory


@pytest.mark.slow
@pytest.mark.distributed
def test_two_tasks_form_one_process_group(tmp_path, toy_data, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "two"
    job = slurm.submit("pretrain", [*TINY_PRETRAIN, "--data-path", str(toy_data), "--output-dir", str(out)],
                       slurm.Resources(processes_per_node=2, timeout_min=10), executor="local")
    results = job.results()
    assert results == [{"output_dir": str(out), "results": None}] * 2
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [(line["world_size"], line["replicas_in_sync"]) for line in lines] == [(2, True), (2, True)]
    assert load_checkpoint(out / "checkpoint.pth")["global_step"] == 8  # 64 images, 8 per process and step
