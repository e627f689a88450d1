"""What a run reports: the header of every script, and Weights & Biases as one more sink of the same numbers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_PRETRAIN, assert_run_header
from evalkit import TINY_FLAGS, official_classifier, save_ours, tiny_pretraining_model

import main_finetune
import main_knn
import main_linear
import main_pretrain
from patchmix.runlog import WANDB_ID_NAME

# ------------------------------------------------------------------------------------------------------------
# The header


def test_every_evaluation_script_prints_the_versions_and_the_sorted_config(tmp_path, toy_data, capsys):
    weights = save_ours(tiny_pretraining_model(), tmp_path / "weights.pth")
    classifier = tmp_path / "classifier.pth"
    torch.save({"state_dict": official_classifier(classes=10).state_dict()}, classifier)
    runs = [(main_knn, weights, []), (main_linear, classifier, ["--eval-only"]),
            (main_finetune, classifier, ["--eval-only"])]
    for script, path, extra in runs:
        out = tmp_path / script.__name__
        capsys.readouterr()
        assert script.main(TINY_FLAGS + ["--data-path", str(toy_data), "--pretrained-weights", str(path),
                                         "--num-heads", "2", "--output-dir", str(out), *extra]) == 0
        assert_run_header(capsys.readouterr().out, out)


# ------------------------------------------------------------------------------------------------------------
# Weights & Biases, offline


def wandb_records(path: Path):
    """The records of an offline run's ``.wandb`` file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB
    blocks of chunks with a 7-byte header: CRC-32, length, type full / first / middle / last), each record a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (kind == 0 and length == 0):  # the zero padding at the end of a block
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def complete_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a finished run. W&B's writer is a process of its own that may still be flushing the file
    when ``finish()`` has returned: wait for the closing ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path)) if path.stat().st_size > 7 else []
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def item_key(item) -> str:
    """A logged name: W&B stores ``train/loss`` as the key or as the nested key ``["train", "loss"]``."""
    return item.key or "/".join(item.nested_key)


def offline_runs(wandb_dir: Path) -> list[dict]:
    """Each offline run under ``wandb_dir`` (oldest first): its id, config, history rows and summary."""
    runs = []
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"id": None, "config": {}, "history": [], "summary": {}}
        for record in complete_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["id"] = record.run.run_id
                run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "history":
                run["history"].append({item_key(item): json.loads(item.value_json) for item in record.history.item})
            elif kind == "summary":
                run["summary"].update({item_key(item): json.loads(item.value_json) for item in record.summary.update})
        runs.append(run)
    return runs


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, writing into this test's folder (its settings are read once per process: torn down after)."""
    wandb = pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true",
                        "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    yield wandb_dir
    wandb.teardown()


def tensorboard_scalars(directory: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.mark.slow  # starts W&B's writer process twice
def test_wandb_gets_the_tensorboard_scalars_and_the_config_and_a_resumed_run_continues_it(
        tmp_path, toy_data, offline_wandb):
    out = tmp_path / "run"
    argv = TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out), "--wandb", "patchmix-test",
                            "--epochs", "1"]
    assert main_pretrain.main(argv + ["--stop-after-steps", "3"]) == 0  # pre-empted mid-epoch
    run_id = (out / WANDB_ID_NAME).read_text().strip()
    assert main_pretrain.main(argv) == 0  # resumed
    assert (out / WANDB_ID_NAME).read_text().strip() == run_id

    first, resumed = offline_runs(offline_wandb)
    assert first["id"] == resumed["id"] == run_id, "the resumed run continues the same W&B run"
    saved = json.loads((out / "config.json").read_text())
    assert {k: resumed["config"].get(k) for k in saved} == saved, "the resolved config of the latest start"
    assert first["config"]["stop_after_steps"] == 3

    # Every TensorBoard scalar, at the same step, with the same value.
    logged: dict[str, dict[int, float]] = {}
    for row in first["history"] + resumed["history"]:
        axis = "global_step" if "global_step" in row else "epoch"
        for key, value in row.items():
            if not key.startswith("_") and key != axis:
                logged.setdefault(key, {})[row[axis]] = value
    board = tensorboard_scalars(out)
    assert logged.keys() == board.keys()
    assert {"train/loss", "train/grad_norm", "train/images_per_second", "epoch/train_loss"} <= board.keys()
    for tag, values in board.items():
        assert logged[tag].keys() == values.keys(), tag
        assert all(logged[tag][step] == pytest.approx(value, rel=1e-6) for step, value in values.items()), tag
    assert sorted(board["train/loss"]) == [1, 2, 3, 4]  # steps 1-3, then 4 after the resume


def test_evaluation_results_become_the_wandb_summary(tmp_path, toy_data, offline_wandb):
    weights = save_ours(tiny_pretraining_model(), tmp_path / "weights.pth")
    out = tmp_path / "knn"
    assert main_knn.main(TINY_FLAGS + ["--data-path", str(toy_data), "--pretrained-weights", str(weights),
                                       "--output-dir", str(out), "--wandb", "patchmix-test"]) == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = offline_runs(offline_wandb)
    assert run["id"] == (out / WANDB_ID_NAME).read_text().strip()
    assert run["summary"]["top1"] == results["top1"] and run["summary"]["knn/200/top5"] == results["knn"]["200"]["top5"]
    assert run["config"]["nb_knn"] == [10, 20, 100, 200]


@pytest.mark.slow  # a fresh interpreter: torch and timm are imported again
def test_without_the_flag_wandb_is_never_imported(tmp_path, toy_data):
    code = ("import sys, main_pretrain\n"
            f"assert main_pretrain.main({TINY_PRETRAIN + ['--data-path', str(toy_data)]!r} + "
            f"['--output-dir', {str(tmp_path / 'run')!r}, '--epochs', '1']) == 0\n"
            "assert 'wandb' not in sys.modules, 'wandb was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_wandb_missing_is_a_one_line_error_before_any_work(tmp_path, toy_data, capsys, monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "wandb" else real_find_spec(name, *args))
    out = tmp_path / "run"
    capsys.readouterr()
    assert main_pretrain.main(TINY_PRETRAIN + ["--data-path", str(toy_data), "--output-dir", str(out),
                                               "--wandb", "p"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --wandb p needs the wandb package") and error.count("\n") == 1
    assert not (out / "checkpoint.pth").exists()
