"""tools/gpu_check.py: the no-GPU path, the runner's isolation and report, and its checks run tiny on the CPU."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
import gpu_check  # noqa: E402


def test_without_a_gpu_it_says_so_writes_a_report_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out == "no GPU: skipped\n"
    report = json.loads(out.read_text())
    assert report["status"] == "skipped" and report["reason"].startswith("no GPU") and report["checks"] == []


def test_every_method_gets_both_precisions_and_every_benchmark_row_a_check(capsys):
    assert gpu_check.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    from patchmix.methods import METHODS
    assert {f"train_{method}_{amp}" for method in METHODS for amp in ("bf16", "fp16")} <= set(names)
    assert set(gpu_check.BENCHMARK_ROWS) <= set(names)
    assert {"nccl_syncbn", "compile", "fused_backbone", "knn_features", "checkpoint_resume"} <= set(names)


def test_unknown_check_is_one_error_line(tmp_path, capsys):
    assert gpu_check.main(["--only", "train_dinno_bf16", "--out", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: unknown check 'train_dinno_bf16'; `python "
                                                    "tools/gpu_check.py --list` names them."]


def test_a_failing_check_does_not_stop_the_others_and_the_report_says_why():
    def passes(settings):
        return {"value": 1}

    def fails(settings):
        raise ValueError("broken on purpose")

    def skips(settings):
        settings.require_cuda("this")

    checks = {"first": fails, "second": skips, "third": passes}
    report = gpu_check.run_all(list(checks), gpu_check.Settings(device="cpu"), isolate=False, checks=checks)
    records = {r["name"]: r for r in report["checks"]}
    assert [r["name"] for r in report["checks"]] == ["first", "second", "third"]
    assert records["first"]["status"] == "fail" and records["first"]["error"].startswith(
        "ValueError: broken on purpose (test_gpu_check.py:")
    assert records["second"] == {"name": "second", "status": "skip", "reason": "this: CUDA only (device cpu)",
                                 "seconds": records["second"]["seconds"]}
    assert records["third"]["status"] == "pass" and records["third"]["details"] == {"value": 1}
    assert report["status"] == "fail" and report["summary"] == {"pass": 1, "fail": 1, "skip": 1}


def test_a_check_whose_process_dies_or_hangs_fails_alone(monkeypatch):
    """Isolation: each check runs in a process of its own; here the processes crash, hang, or report."""
    behaviours = {
        "crash": "import os, sys; print('about to die', file=sys.stderr); os.abort()",
        "hang": "import time; time.sleep(60)",
        "report": "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'name': 'report', 'status': 'pass', "
                  "'seconds': 0.0, 'details': {}}))",
    }
    monkeypatch.setattr(gpu_check, "child_command",
                        lambda name, settings, result: [sys.executable, "-c", behaviours[name], str(result)])
    report = gpu_check.run_all(list(behaviours), gpu_check.Settings(device="cpu"), isolate=True, timeout=2)
    crash, hang, reported = report["checks"]
    assert crash["status"] == "fail" and "exited -6 without a result: about to die" in crash["error"]
    assert hang["status"] == "fail" and hang["error"] == "timed out after 2 s"
    assert reported == {"name": "report", "status": "pass", "seconds": 0.0, "details": {}}
    assert report["summary"] == {"pass": 1, "fail": 2, "skip": 0}


@pytest.mark.slow
def test_the_checks_run_tiny_on_the_cpu_each_in_its_own_process(tmp_path):
    out = tmp_path / "cpu.json"
    only = ["train_patchmix_fp16", "nccl_syncbn", "fused_backbone", "knn_features", "checkpoint_resume"]
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), *[f"--only={name}" for name in only]])
    report = json.loads(out.read_text())
    records = {r["name"]: r for r in report["checks"]}
    assert code == 0 and report["summary"] == {"pass": 4, "fail": 0, "skip": 1}, report
    assert records["nccl_syncbn"]["reason"] == "NCCL and SyncBatchNorm: CUDA only (device cpu)"
    training = records["train_patchmix_fp16"]["details"]
    assert training["last_quarter_mean"] < training["first_quarter_mean"] and training["amp"] == "fp16"
    assert records["checkpoint_resume"]["details"]["bit_identical"] is True
    assert records["fused_backbone"]["details"]["fused"]["first_loss"] == pytest.approx(
        records["fused_backbone"]["details"]["unfused"]["first_loss"], rel=1e-4)
    assert report["environment"]["device"] == "cpu" and report["environment"]["quick"] is True


def test_the_learning_signal_of_self_distillation_is_its_kl_term():
    # DINO: cross-entropy 5.0 against a teacher of entropy 4.2 -> KL 0.8; SelfPatch: the image loss's KL, not
    # the total with the patch loss; contrastive methods: the loss itself
    assert gpu_check.learning_signal({"loss": 5.0, "teacher_entropy": 4.2}) == pytest.approx(0.8)
    assert gpu_check.learning_signal({"loss": 5.5, "image_loss": 5.0, "patch_loss": 5.0,
                                      "teacher_entropy": 4.5}) == pytest.approx(0.5)
    assert gpu_check.learning_signal({"loss": 3.0, "o2o": 1.0}) == 3.0
    assert gpu_check.training_recipe("selfpatch") == "selfpatch_imagenet_vit_small"
    assert gpu_check.training_recipe("patchmix") == "cifar10_vit_tiny"
    assert gpu_check.training_recipe("dino") == "dino_cifar10_vit_tiny"
