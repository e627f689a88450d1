"""The launcher on a real SLURM: a one-node cluster on this machine (munged, slurmctld and slurmd from Debian's
``slurm-wlm`` and ``munge`` packages, started by the test with their own configuration, key and ports).

A pretraining job submitted with ``python -m patchmix.slurm`` is requeued by ``scontrol requeue`` while it trains
(what a pre-emption in requeue mode does: SIGTERM to every process), and ``tools/slurm/pretrain.sbatch`` requeues
itself when told its time limit is near; both end with the weights of an uninterrupted run. (submitit's own
time-limit path, USR2, is tested with its local executor in ``test_slurm.py``.) Each waits for SLURM's delay before
a requeued job starts again (about two minutes). Skipped when SLURM is not installed or not started as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_PRETRAIN, make_fashion_like

from patchmix import slurm
from patchmix.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.faults]

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")
# 512 toy images, batch 16: 32 steps per epoch, 6 epochs: long enough to be interrupted twice.
LONG_RUN = TINY_PRETRAIN + ["--train-subset", "512", "--epochs", "6"]


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(root: Path, host: str) -> str:
    """A one-node cluster: no accounting, no cgroup confinement, processes tracked by parent id."""
    return "\n".join([
        "ClusterName=patchmixtest", f"SlurmctldHost={host}", "SlurmUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={root}/munge.socket", f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none", "MpiDefault=none", "ReturnToService=2", "JobRequeue=1",
        "KillWait=30", f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("PATCHMIX_SLURM_TESTS") != "1":  # about 6 minutes: more than the rest of the suite allows
        pytest.skip("the one-node SLURM tests run with PATCHMIX_SLURM_TESTS=1 (needs slurm-wlm, munge and root)")
    missing = [name for name in DAEMONS if which(name) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found; apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs")
    root = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))  # short: a socket path is at most 107 bytes
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host))
    (root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")
    subprocess.run([which("mungekey"), "--create", f"--keyfile={root}/munge.key"], check=True)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # every client (sbatch, squeue, srun in the job) reads this cluster
    daemons = [subprocess.Popen([which("munged"), "--foreground", "--force", f"--socket={root}/munge.socket",
                                 f"--key-file={root}/munge.key", f"--log-file={root}/munged.log",
                                 f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    time.sleep(1)
    for daemon in ("slurmctld", "slurmd"):
        daemons.append(subprocess.Popen([which(daemon), "-D", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT))
    try:
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline and state != "idle":
            time.sleep(1)
            state = subprocess.run([which("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
        if state != "idle":
            logs = " | ".join(p.read_text().strip().splitlines()[-1] for p in sorted(root.glob("*.log"))
                              if p.read_text().strip())
            pytest.skip(f"the one-node SLURM did not come up (node state {state!r}): {logs}")
        yield root
    finally:
        for process in reversed(daemons):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if saved is None:
            del os.environ["SLURM_CONF"]
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(root, ignore_errors=True)


def job_state(job_id: str) -> str:
    return subprocess.run([which("squeue"), "-h", "-j", job_id, "-o", "%t"], capture_output=True,
                          text=True).stdout.strip()


def wait_for(condition, what: str, timeout: float = 300.0, job_id: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}" + (f": {job_report(job_id)}" if job_id else ""))
        time.sleep(0.1)


def log_lines(out: Path) -> int:
    path = out / "log.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def job_report(job_id: str) -> str:
    return subprocess.run([which("scontrol"), "show", "job", job_id], capture_output=True, text=True).stdout


def test_requeued_by_scontrol_on_a_real_slurm_and_ends_with_the_uninterrupted_weights(cluster, tmp_path,
                                                                                      monkeypatch):
    pytest.importorskip("submitit")
    data = make_fashion_like(tmp_path / "data", train=512, test=16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread: bit-reproducible runs
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "main_pretrain.py", *LONG_RUN, "--data-path", str(data), "--output-dir",
                    str(reference)], cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)

    out = tmp_path / "job"
    job = slurm.submit("pretrain", [*LONG_RUN, "--data-path", str(data), "--output-dir", str(out)],
                       slurm.Resources(timeout_min=10, signal_delay_s=60), executor="slurm")
    wait_for(lambda: log_lines(out) >= 1, "the first epoch", job_id=job.job_id)
    subprocess.run([which("scontrol"), "requeue", job.job_id], check=True)  # SIGTERM, then requeued by SLURM
    # SLURM starts a requeued job after a delay of its own (about two minutes)
    wait_for(lambda: job.paths.result_pickle.exists() and job_state(job.job_id) in ("CD", ""), "the end of the job",
             job_id=job.job_id)

    assert job.result() == {"output_dir": str(out), "results": None}
    log = job.stdout()
    assert "Stopped (received SIGTERM)" in log and "Resumed from" in log
    final, straight = load_checkpoint(out / "checkpoint.pth"), load_checkpoint(reference / "checkpoint.pth")
    assert (final["epoch"], final["step_in_epoch"]) == (6, 0)
    for key in straight["model"]:
        assert torch.equal(final["model"][key], straight["model"][key]), key


def test_the_sbatch_example_runs_two_processes_and_requeues_itself_before_the_time_limit(cluster, tmp_path,
                                                                                        monkeypatch):
    data = make_fashion_like(tmp_path / "data", train=512, test=16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    flags = [*LONG_RUN, "--data-path", str(data)]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "main_pretrain.py", *flags, "--output-dir", str(reference)], cwd=REPO_ROOT, check=True,
                   capture_output=True, timeout=300)

    out, log = tmp_path / "job", tmp_path / "job.out"
    # two processes on this CPU-only node; the example's other settings as they are
    submitted = subprocess.run([which("sbatch"), "--parsable", "--ntasks-per-node=2", "--gpus-per-node=0",
                                "--cpus-per-task=1", "--time=10", f"--output={log}", "tools/slurm/pretrain.sbatch",
                                *flags, "--output-dir", str(out)], cwd=REPO_ROOT, check=True, capture_output=True,
                               text=True)
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for(lambda: log_lines(out) >= 1, "the first epoch")
    subprocess.run([which("scancel"), "--batch", "--signal=USR1", job_id], check=True)  # what --signal=B:USR1 sends
    wait_for(lambda: job_state(job_id) in ("CD", "F", ""), "the end of the job", job_id=job_id)

    text = log.read_text()
    assert job_state(job_id) in ("CD", ""), text[-3000:]
    assert "time limit near: stopping at the next step, then requeueing" in text and "requeueing job" in text
    assert "Stopped (received SIGUSR1)" in text and "Resumed from" in text and "x 2 process(es)" in text
    final, straight = load_checkpoint(out / "checkpoint.pth"), load_checkpoint(reference / "checkpoint.pth")
    assert (final["epoch"], final["step_in_epoch"], len(final["rng"])) == (6, 0, 2)
    for key in straight["model"]:
        assert torch.equal(final["model"][key], straight["model"][key]), key
