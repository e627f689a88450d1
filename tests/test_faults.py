"""Faults provoked for real: SIGKILL at several moments, SIGTERM pre-emption, a non-finite loss, a dead node."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_PRETRAIN, children

import main_pretrain
from patchmix.checkpoint import load_checkpoint

pytestmark = pytest.mark.faults

# 256 toy images, batch 16: 16 steps per epoch, 3 epochs. One process, one thread: bit-reproducible.
LONGER = TINY_PRETRAIN + ["--train-subset", "256", "--epochs", "3"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    from conftest import make_fashion_like
    return make_fashion_like(tmp_path_factory.mktemp("toy256"), train=256, test=32)


def start(out: Path, data: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "main_pretrain.py", *LONGER, "--data-path", str(data), "--output-dir", str(out),
               *extra]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 180) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def wait_for(condition, timeout: float = 120.0, interval: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def log_lines(out: Path) -> int:
    path = out / "log.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def final_model(out: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(out / "checkpoint.pth")
    assert state["epoch"] == 3 and state["step_in_epoch"] == 0
    return state["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, many_images):
    out = tmp_path_factory.mktemp("reference") / "run"
    finish(start(out, many_images))
    return final_model(out)


def assert_same_model(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigkill_at_several_moments_then_rerun_matches_an_uninterrupted_run(tmp_path, many_images, reference):
    out = tmp_path / "killed"
    for epochs_done, delay in ((0, 0.0), (1, 0.15), (2, 0.02)):
        process = start(out, many_images)
        wait_for(lambda: log_lines(out) > epochs_done or process.poll() is not None)
        time.sleep(delay)  # mid-epoch, or right around a checkpoint write
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = load_checkpoint(out / "checkpoint.pth")  # never corrupt
        assert state["epoch"] >= epochs_done
        assert not list(out.glob("checkpoint.pth.tmp*"))
    finish(start(out, many_images))
    assert_same_model(final_model(out), reference)


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_resumes_exactly(tmp_path, many_images, reference):
    out = tmp_path / "preempted"
    process = start(out, many_images)
    wait_for(lambda: log_lines(out) >= 1)
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert "Stopped (received SIGTERM)" in output and "Run the same command again to resume" in output
    state = load_checkpoint(out / "checkpoint.pth")
    assert state["global_step"] > 16  # saved where it stopped, not at the last epoch boundary
    finish(start(out, many_images))
    assert_same_model(final_model(out), reference)


SAVER = textwrap.dedent("""
    import sys, torch
    from patchmix.checkpoint import save_checkpoint
    path = sys.argv[1]
    for i in range(1000):
        save_checkpoint({"marker": i, "weights": torch.full((4_000_000,), float(i))}, path)
        print(i, flush=True)
""")


@pytest.mark.slow
def test_checkpoint_file_is_never_torn_by_a_kill_during_the_write(tmp_path):
    path = tmp_path / "checkpoint.pth"
    for delay in (0.0, 0.013, 0.031, 0.057, 0.1):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=REPO_ROOT, env=ENV,
                                   stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # one complete save exists
        time.sleep(delay)
        process.kill()
        process.wait()
        state = torch.load(path, weights_only=True)
        assert torch.all(state["weights"] == state["marker"])  # old or new, never a mixture or a stub
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pth"]
    assert all(name.startswith(".checkpoint.pth.tmp") for name in leftovers)  # a killed write leaves only its temp


def test_truncated_checkpoint_is_a_clear_error(tmp_path, toy_data, capsys):
    out = tmp_path / "run"
    main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out), "--epochs", "1"])
    data = (out / "checkpoint.pth").read_bytes()
    (out / "checkpoint.pth").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out),
                                               "--epochs", "1"]) == 2
    assert re.search("error: cannot read checkpoint .*truncated or corrupt.*--resume", capsys.readouterr().err)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, toy_data, capsys):
    first = tmp_path / "small"
    main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(first), "--epochs", "1"])
    capsys.readouterr()
    assert main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(tmp_path / "wide"),
                                               "--embed-dim", "48", "--resume", str(first / "checkpoint.pth")]) == 2
    assert re.search("does not fit this model.*embed_dim': 32", capsys.readouterr().err)


def test_non_finite_loss_stops_with_step_terms_and_lr(tmp_path, toy_data, monkeypatch, capsys):
    import patchmix.loss as loss_module
    real = loss_module.contrastive_loss
    monkeypatch.setattr(loss_module, "contrastive_loss", lambda *a: real(*a) * float("nan"))
    assert main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir",
                                               str(tmp_path / "nan")]) == 2
    error = capsys.readouterr().err
    assert re.fullmatch(r"error: non-finite loss at epoch 0, step 0 \(global\) on process 0 of 1: .*m2o=nan.*o2o=nan"
                        r".*lr=.*--allow-config-change.*\n", error)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(rank: int, port: int, out: Path, data: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "main_pretrain.py",
               *TINY_PRETRAIN, "--data-path", str(data), "--output-dir", str(out), *extra]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_train_in_lockstep(tmp_path, toy_data):
    import json
    port, out = free_port(), tmp_path / "two_nodes"
    nodes = [start_node(rank, port, out, toy_data) for rank in (0, 1)]
    for node in nodes:
        finish(node, timeout=240)
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [(line["epoch"], line["world_size"], line["replicas_in_sync"]) for line in lines] == [(1, 2, True),
                                                                                                (2, 2, True)]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_dead_node_makes_the_other_exit_instead_of_hanging(tmp_path, many_images):
    port, out = free_port(), tmp_path / "dead"
    extra = ["--train-subset", "256", "--epochs", "200", "--dist-timeout-minutes", "1"]
    nodes = [start_node(rank, port, out, many_images, *extra) for rank in (0, 1)]
    try:
        wait_for(lambda: log_lines(out) >= 1 or any(n.poll() is not None for n in nodes), timeout=180)
        assert all(n.poll() is None for n in nodes), "both nodes should be training"
        # node 1 dies: its torchrun agent and its worker (torchrun starts workers in their own session)
        for pid in [nodes[1].pid, *children(nodes[1].pid)]:
            os.kill(pid, signal.SIGKILL)
        killed = time.time()
        nodes[0].wait(timeout=90)
        assert nodes[0].returncode != 0
        assert time.time() - killed < 90
    finally:
        for node in nodes:
            if node.poll() is None:
                for pid in [node.pid, *children(node.pid)]:
                    os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------------------
# The classifiers run on the same engine: the same guarantees


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from evalkit import save_ours, tiny_pretraining_model
    return save_ours(tiny_pretraining_model(), tmp_path_factory.mktemp("weights") / "ours.pth")


def start_linear(out: Path, data: Path, weights: Path, *extra: str) -> subprocess.Popen:
    from evalkit import TINY_FLAGS
    command = [sys.executable, "main_linear.py", *TINY_FLAGS, "--data-path", str(data), "--output-dir", str(out),
               "--pretrained-weights", str(weights), "--batch-size", "16", "--epochs", "20", "--log-freq", "1",
               *extra]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_sigterm_during_a_linear_probe_then_rerun_is_bit_identical(tmp_path, many_images, tiny_weights):
    straight = tmp_path / "straight"
    finish(start_linear(straight, many_images, tiny_weights))
    out = tmp_path / "preempted"
    process = start_linear(out, many_images, tiny_weights)
    wait_for(lambda: log_lines(out) >= 2 or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert "Stopped (received SIGTERM)" in output and not (out / "results.json").exists()
    stopped = load_checkpoint(out / "checkpoint.pth")
    assert 2 <= stopped["epoch"] < 20
    finish(start_linear(out, many_images, tiny_weights))
    assert_same_model(load_checkpoint(out / "checkpoint.pth")["model"],
                      load_checkpoint(straight / "checkpoint.pth")["model"])


NAN_ON_RANK_1 = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.getcwd())
    from patchmix.engine import StepOutput
    from patchmix.evaluation import classifier

    real, calls = classifier.ClassifierTask.loss, [0]

    def loss(self, batch, values, timer=None):
        out = real(self, batch, values)
        calls[0] += 1
        if os.environ["RANK"] == "1" and calls[0] == 3:  # the third step, on one process only
            return StepOutput(out.loss * float("nan"), out.terms)
        return out

    classifier.ClassifierTask.loss = loss
    import main_linear
    sys.exit(main_linear.main(sys.argv[1:]))
""")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_nan_on_one_process_stops_both_at_the_same_step(tmp_path, toy_data, tiny_weights):
    from evalkit import TINY_FLAGS
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               *TINY_FLAGS, "--data-path", str(toy_data), "--output-dir", str(tmp_path / "out"),
               "--pretrained-weights", str(tiny_weights), "--batch-size", "16", "--epochs", "2"]
    tic = time.time()
    result = subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0 and time.time() - tic < 120
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], errors  # both processes, the same message
    assert errors[0].startswith("error: non-finite loss at epoch 0, step 2 (global) on process 1 of 2: loss=nan")
    # torchrun reports the failed workers with a traceback of its own; none comes from the workers' code
    assert f'File "{REPO_ROOT}' not in result.stdout + result.stderr
