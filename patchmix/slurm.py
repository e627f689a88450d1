"""Submit any entry script to a SLURM cluster with submitit: N nodes x G GPUs, requeued when pre-empted.

  python -m patchmix.slurm --script pretrain --nodes 2 --gpus-per-node 8 --partition gpu \\
      --config imagenet_vit_small --data-path /data/imagenet --output-dir out/in1k_s
  python -m patchmix.slurm --script knn --gpus-per-node 1 --config cifar10_vit_tiny --data-path data
  python -m patchmix.slurm --script pretrain --executor local ...     # the same job on this machine (testing)

The flags after the launcher's own (``--script``, the resources below) are the entry script's, exactly as on its
command line; they are checked before anything is submitted. The job starts one process per GPU (one per node
without GPUs), each running ``python main_<script>.py FLAGS`` with the process-group variables torch reads
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the run is the one ``torchrun`` would start.

The run's directory is the entry script's ``--output-dir``; submitit's files (job logs, pickles) go to its
``slurm/`` sub-folder. Pre-emption and time limits: SLURM signals the job ``--signal-delay-s`` seconds before it
kills it (submitit asks for USR2); the launcher then sends SIGTERM to the training processes, which save their
exact position at the next step boundary and exit (the engine's pre-emption path), and submitit requeues the job
(at most ``--max-requeues`` times after time limits). The requeued job runs the same command, which resumes from
``OUTPUT_DIR/checkpoint.pth``: the run ends with the weights an uninterrupted run would have. A plain SIGTERM
from the cluster (``scontrol requeue``, pre-emption in requeue mode) saves the same way; SLURM requeues the job.

Only this module imports submitit (``pip install submitit``). ``tools/slurm/pretrain.sbatch`` is the same
launch as a plain ``sbatch`` script, for clusters without it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from patchmix.config import ConfigError, parse_config, suggest

__all__ = ["ENTRY_SCRIPTS", "EntryScript", "ScriptJob", "submit", "run_complete", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EntryScript:
    """An entry script the launcher can run: its file, its recipe folder and its config class (or chooser)."""

    file: str
    kind: str
    resolve: Callable[[], Any]  # returns the ``resolve`` argument of parse_config (imported lazily)


def _pretrain_resolver() -> Any:
    from patchmix.methods import get_method
    return lambda values: get_method(values.get("method", "patchmix")).config_class


def _knn_config() -> Any:
    from patchmix.evaluation.knn import KnnConfig
    return KnnConfig


def _linear_config() -> Any:
    from patchmix.evaluation.linear import LinearConfig
    return LinearConfig


def _finetune_config() -> Any:
    from patchmix.evaluation.finetune import FinetuneConfig
    return FinetuneConfig


def _video_config() -> Any:
    from patchmix.evaluation.video_segmentation import VideoSegConfig
    return VideoSegConfig


ENTRY_SCRIPTS: dict[str, EntryScript] = {
    "pretrain": EntryScript("main_pretrain.py", "pretrain", _pretrain_resolver),
    "knn": EntryScript("main_knn.py", "knn", _knn_config),
    "linear": EntryScript("main_linear.py", "linear", _linear_config),
    "finetune": EntryScript("main_finetune.py", "finetune", _finetune_config),
    "video_segmentation": EntryScript("main_video_segmentation.py", "video_segmentation", _video_config),
}


def run_complete(script: str, output_dir: Path, epochs: int, started_at: float) -> bool:
    """Whether the run in ``output_dir`` reached its end (rather than stopping early to be resumed).

    Every script exits 0 both when it finishes and when a signal made it save and stop, so the run directory
    decides: pretraining is complete when ``checkpoint.pth`` is at epoch ``epochs``, step 0; the evaluations
    write ``results.json`` as their last act (a file older than ``started_at`` is a previous run's).
    """
    if script == "pretrain":
        import torch
        path = output_dir / "checkpoint.pth"
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state.get("epoch", 0)) >= epochs and int(state.get("step_in_epoch", 0)) == 0
    results = output_dir / "results.json"
    return results.is_file() and results.stat().st_mtime >= started_at - 1.0


def _die_with_parent() -> None:
    """In the training process, before exec: SIGTERM it if the launcher process dies (Linux ``prctl``), so a
    killed job never leaves a training process behind to race the requeued one; and ignore submitit's
    pre-emption signal (SLURM sends it to every process of the job; the launcher turns it into SIGTERM)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    preempt = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
    if preempt and hasattr(signal, "SIG" + preempt):
        signal.signal(getattr(signal, "SIG" + preempt), signal.SIG_IGN)


class ScriptJob:
    """What submitit runs in every task of the job: the entry script as a child process, and its checkpoint.

    submitit calls :meth:`checkpoint` (on the first task) when the job is pre-empted or about to time out; it
    stops the training at a step boundary (SIGTERM: the engine saves the exact position) and returns this same
    job, which submitit requeues. Re-running the command resumes from the run directory.
    """

    def __init__(self, script: str, argv: list[str], output_dir: str, epochs: int, workdir: str,
                 stop_timeout_s: float) -> None:
        self.script, self.argv, self.output_dir, self.epochs = script, list(argv), output_dir, epochs
        self.workdir, self.stop_timeout_s = workdir, stop_timeout_s
        self._child: subprocess.Popen | None = None
        self._waiter: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_child"] = state["_waiter"] = None
        return state

    def command(self) -> list[str]:
        return [sys.executable, "-u", str(REPO_ROOT / ENTRY_SCRIPTS[self.script].file), *self.argv]

    def child_environment(self) -> dict[str, str]:
        """The job's environment, plus the process-group variables when the job has several tasks."""
        import submitit
        env = dict(os.environ)
        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            dist = submitit.helpers.TorchDistributedEnvironment()
            env.update(MASTER_ADDR=dist.master_addr, MASTER_PORT=str(dist.master_port), RANK=str(dist.rank),
                       WORLD_SIZE=str(dist.world_size), LOCAL_RANK=str(dist.local_rank),
                       LOCAL_WORLD_SIZE=str(dist.local_world_size))
        return env

    def __call__(self) -> dict[str, Any]:
        import submitit
        rank = submitit.JobEnvironment().global_rank
        started = time.time()
        print(f"patchmix.slurm: task {rank} runs: {' '.join(self.command())}", flush=True)
        self._child = subprocess.Popen(self.command(), cwd=self.workdir, env=self.child_environment(),
                                       preexec_fn=_die_with_parent)
        # A thread reaps the child; the main thread only joins it, so that submitit's signal handler (which runs
        # in the main thread, wherever it is) can wait for the child too without re-entering Popen.wait.
        self._waiter = threading.Thread(target=self._child.wait, daemon=True)
        self._waiter.start()
        previous = signal.signal(signal.SIGTERM, self._forward_sigterm)
        try:
            while self._waiter.is_alive():
                self._waiter.join(0.5)
        finally:
            if self._child.returncode is None:  # interrupted (the local executor's SIGINT): stop it cleanly
                self._stop_child()
            signal.signal(signal.SIGTERM, previous)
        code = self._child.returncode
        if code != 0:
            hint = " (its one-line error is above)" if code == 2 else ""
            raise RuntimeError(f"{ENTRY_SCRIPTS[self.script].file} exited with status {code}{hint}.")
        output_dir = Path(self.output_dir)
        if not run_complete(self.script, output_dir, self.epochs, started):
            # Stopped early by the cluster's SIGTERM (requeue, pre-emption, scancel) or --stop-after-steps: the
            # position is saved; leave no result, so that the job reads as unfinished until a rerun completes it.
            print(f"patchmix.slurm: task {rank}: the run stopped before its end; its position is saved in "
                  f"{output_dir}. A requeued or resubmitted job continues it.", flush=True)
            raise SystemExit(0)
        results = output_dir / ("knn.json" if self.script == "pretrain" else "results.json")
        return {"output_dir": str(output_dir),
                "results": json.loads(results.read_text()) if results.is_file() else None}

    def _forward_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM to the launcher (cluster pre-emption, the local executor's stop) goes to the training."""
        if self._child is not None and self._child.returncode is None:
            self._child.send_signal(signal.SIGTERM)

    def _stop_child(self) -> None:
        """SIGTERM the training and wait (at most ``stop_timeout_s``) until it has saved and exited."""
        assert self._child is not None and self._waiter is not None
        self._child.send_signal(signal.SIGTERM)
        self._waiter.join(self.stop_timeout_s)
        if self._waiter.is_alive():
            print(f"patchmix.slurm: the training did not stop within {self.stop_timeout_s:.0f} s; the requeued "
                  f"job resumes from its last saved checkpoint.", flush=True)
            self._child.kill()
            self._waiter.join()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's pre-emption hook: save at the next step boundary, then requeue this same job."""
        import submitit
        if self._child is not None and self._child.returncode is None:
            print("patchmix.slurm: pre-emption or time limit: stopping the training at the next step to "
                  "requeue", flush=True)
            self._stop_child()
        return submitit.helpers.DelayedSubmission(ScriptJob(self.script, self.argv, self.output_dir, self.epochs,
                                                            self.workdir, self.stop_timeout_s))


# ------------------------------------------------------------------------------------------------------------
# Submission


@dataclass(frozen=True)
class Resources:
    """What the job asks the cluster for."""

    nodes: int = 1
    gpus_per_node: int = 0
    processes_per_node: int = 0  # 0: one per GPU (one without GPUs)
    cpus_per_task: int = 0  # 0: the script's --num-workers + 2
    timeout_min: int = 1440
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    mem_gb: float = 0.0
    signal_delay_s: int = 120
    max_requeues: int = 20
    job_name: str = ""
    extra: tuple[str, ...] = ()  # KEY=VALUE sbatch options

    @property
    def tasks_per_node(self) -> int:
        return self.processes_per_node or max(self.gpus_per_node, 1)


def check_script_flags(script: str, argv: list[str]) -> Any:
    """The entry script's config for ``argv`` (a :class:`ConfigError` if the flags are wrong)."""
    if script not in ENTRY_SCRIPTS:
        raise ConfigError(f"unknown --script {script!r}; choose one of {', '.join(ENTRY_SCRIPTS)}."
                          f"{suggest(script, list(ENTRY_SCRIPTS))}")
    entry = ENTRY_SCRIPTS[script]
    return parse_config(entry.resolve(), argv, entry.kind, f"python {entry.file}")


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as error:
        raise ConfigError("the SLURM launcher needs submitit: pip install submitit (or pip install -e "
                          "'.[slurm]'); without it, see tools/slurm/pretrain.sbatch.") from error
    return submitit


def submit(script: str, argv: list[str], resources: Resources = Resources(), executor: str = "auto") -> Any:
    """Check the flags, then submit ``main_<script>.py argv`` as one job; return the submitit job.

    ``executor``: ``slurm``, ``local`` (this machine, one node: tests and debugging), or ``auto`` (SLURM when
    ``sbatch`` is found, else local).
    """
    cfg = check_script_flags(script, argv)
    submitit = _import_submitit()
    if executor not in ("auto", "slurm", "local"):
        raise ConfigError(f"unknown --executor {executor!r}; choose auto, slurm or local.")
    if executor == "local" and resources.nodes > 1:
        raise ConfigError("the local executor runs on this machine only: use --nodes 1, or --executor slurm.")
    output_dir = Path(cfg.output_dir).resolve()
    folder = output_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    if executor == "auto":
        executor = "slurm" if submitit.AutoExecutor.which() == "slurm" else "local"
    extra: dict[str, Any] = {}
    for item in resources.extra:
        key, sep, value = item.partition("=")
        if not key.strip("-") or key.startswith("-"):
            raise ConfigError(f"--slurm-option {item!r}: write KEY=VALUE or KEY (an sbatch option without its "
                              f"leading dashes, e.g. exclusive or reservation=mine).")
        extra[key.replace("-", "_")] = value if sep else True
    folder_pattern = str(folder / "%j")
    if executor == "slurm":
        pool = submitit.SlurmExecutor(folder=folder_pattern, max_num_timeout=resources.max_requeues)
        parameters: dict[str, Any] = dict(
            job_name=resources.job_name or f"patchmix-{script}", time=resources.timeout_min, nodes=resources.nodes,
            ntasks_per_node=resources.tasks_per_node,
            cpus_per_task=resources.cpus_per_task or int(getattr(cfg, "num_workers", 0)) + 2,
            signal_delay_s=resources.signal_delay_s)
        optional = {"gpus_per_node": resources.gpus_per_node, "partition": resources.partition,
                    "account": resources.account, "qos": resources.qos, "constraint": resources.constraint,
                    "mem": f"{resources.mem_gb:g}GB" if resources.mem_gb else "", "additional_parameters": extra}
        parameters.update({key: value for key, value in optional.items() if value})
    else:
        pool = submitit.LocalExecutor(folder=folder_pattern, max_num_timeout=resources.max_requeues)
        parameters = dict(timeout_min=resources.timeout_min, tasks_per_node=resources.tasks_per_node,
                          gpus_per_node=resources.gpus_per_node, signal_delay_s=resources.signal_delay_s)
    pool.update_parameters(**parameters)
    job = ScriptJob(script, argv, str(output_dir), int(getattr(cfg, "epochs", 0)), os.getcwd(),
                    stop_timeout_s=max(resources.signal_delay_s - 15, 10))
    # The job imports this checkout's code (cloudpickle names ScriptJob by its module), installed or not: the
    # environment at submission is the job's (sbatch exports it; the local executor copies it).
    saved = os.environ.get("PYTHONPATH")
    paths = [str(REPO_ROOT)] + [p for p in (saved or "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        return pool.submit(job)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's options, and the rest: the entry script's flags."""
    parser = argparse.ArgumentParser(prog="python -m patchmix.slurm", description=__doc__, add_help=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    own = parser.add_argument_group("launcher (every other flag goes to the entry script)")
    own.add_argument("--script", required=True, help=f"entry script: {', '.join(ENTRY_SCRIPTS)}")
    own.add_argument("--executor", default="auto", choices=("auto", "slurm", "local"),
                     help="slurm, local (this machine: one node, for trials) or auto (default: slurm if sbatch "
                     "is found)")
    own.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    own.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, one process each (default 0)")
    own.add_argument("--tasks-per-node", type=int, default=0, help="processes per node (default: one per GPU, "
                     "one without GPUs)")
    own.add_argument("--cpus-per-task", type=int, default=0, help="CPUs per process (default --num-workers + 2)")
    own.add_argument("--timeout-min", type=int, default=1440, help="time limit of one job in minutes (the job "
                     "is requeued when it runs out; default 1440)")
    own.add_argument("--partition", default="", help="SLURM partition")
    own.add_argument("--account", default="", help="SLURM account")
    own.add_argument("--qos", default="", help="SLURM quality of service")
    own.add_argument("--constraint", default="", help="SLURM node constraint")
    own.add_argument("--mem-gb", type=float, default=0.0, help="memory per node (default: the cluster's)")
    own.add_argument("--signal-delay-s", type=int, default=120, help="seconds between the pre-emption signal "
                     "and the kill: enough for one step and a checkpoint save (default 120)")
    own.add_argument("--max-requeues", type=int, default=20, help="requeues after time limits (default 20)")
    own.add_argument("--job-name", default="", help="default patchmix-SCRIPT")
    own.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                     help="any other sbatch option, e.g. --slurm-option exclusive or --slurm-option "
                     "reservation=mine (repeatable)")
    own.add_argument("--wait", action="store_true", help="wait for the job to end and print its results")
    if any(arg in ("-h", "--help") for arg in argv) and "--script" not in argv:
        parser.print_help()
        raise SystemExit(0)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, script_argv = parse_args(argv)
        if any(arg in ("-h", "--help") for arg in script_argv):
            check_script_flags(args.script, script_argv)  # prints the entry script's help and exits
        resources = Resources(args.nodes, args.gpus_per_node, args.tasks_per_node, args.cpus_per_task,
                              args.timeout_min,
                              args.partition, args.account, args.qos, args.constraint, args.mem_gb,
                              args.signal_delay_s, args.max_requeues, args.job_name, tuple(args.slurm_option))
        for name, least in (("nodes", 1), ("timeout_min", 1), ("gpus_per_node", 0), ("processes_per_node", 0),
                            ("cpus_per_task", 0), ("signal_delay_s", 1), ("max_requeues", 0)):
            if getattr(resources, name) < least:
                flag = "tasks_per_node" if name == "processes_per_node" else name
                raise ConfigError(f"--{flag.replace('_', '-')} must be at least {least}.")
        output_dir = Path(check_script_flags(args.script, script_argv).output_dir)
        job = submit(args.script, script_argv, resources, args.executor)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    processes = resources.nodes * resources.tasks_per_node
    where = f"{resources.nodes} node(s) x {resources.gpus_per_node} GPU(s)" if resources.gpus_per_node else \
        f"{resources.nodes} node(s), no GPU"
    print(f"submitted job {job.job_id} ({where}, {processes} process(es)): python "
          f"{ENTRY_SCRIPTS[args.script].file} {' '.join(script_argv)}")
    print(f"  run directory: {output_dir} (re-submitting the same command resumes it)")
    print(f"  job log:       {job.paths.stdout}")
    if args.wait:
        try:
            result = job.result()
        except Exception as error:  # submitit reports the job's failure with its log
            print(f"error: job {job.job_id} failed: {str(error).strip().splitlines()[-1]} (log: "
                  f"{job.paths.stdout})", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
