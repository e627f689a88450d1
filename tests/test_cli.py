"""Every entry script answers bad input with one line that names the problem and the fix, never a traceback."""

from __future__ import annotations

import pytest
from evalkit import save_ours, tiny_pretraining_model

import main_finetune
import main_knn
import main_linear
import main_pretrain

SCRIPTS = {"pretrain": main_pretrain, "knn": main_knn, "linear": main_linear, "finetune": main_finetune}


def one_line_error(capsys, script, argv) -> str:
    capsys.readouterr()
    assert script.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.out + captured.err
    return captured.err


@pytest.mark.parametrize("kind", SCRIPTS)
def test_a_command_without_a_recipe_lists_the_recipes(kind, capsys):
    error = one_line_error(capsys, SCRIPTS[kind], ["--dataset", "cifar10"])
    assert "no --config given" in error and "cifar10_vit_small" in error and "demo" in error


@pytest.mark.parametrize("kind", SCRIPTS)
def test_a_misspelled_key_in_a_recipe_suggests_the_right_one(kind, capsys, tmp_path):
    recipe = tmp_path / "mine.py"
    recipe.write_text("CONFIG = {'batch_sise': 8}\n")
    error = one_line_error(capsys, SCRIPTS[kind], ["--config", str(recipe)])
    assert "unknown config key 'batch_sise'" in error and "Did you mean 'batch_size'?" in error


@pytest.mark.parametrize("kind", SCRIPTS)
def test_a_missing_dataset_says_where_it_looked_and_how_to_get_it(kind, capsys, tmp_path):
    weights = save_ours(tiny_pretraining_model(), tmp_path / "weights.pth")
    argv = ["--config", "demo", "--dataset", "cifar10", "--data-path", str(tmp_path / "nothing"), "--device", "cpu",
            "--output-dir", str(tmp_path / "out"), "--num-workers", "0"]
    if kind != "pretrain":
        argv += ["--pretrained-weights", str(weights)]
    error = one_line_error(capsys, SCRIPTS[kind], argv)
    assert "cifar10 not found in" in error and "--download" in error


@pytest.mark.parametrize("kind", SCRIPTS)
def test_a_value_out_of_range_is_refused(kind, capsys):
    error = one_line_error(capsys, SCRIPTS[kind], ["--config", "demo", "--batch-size", "-4"])
    assert "--batch-size -4: it must be >= 1" in error
