"""The config system: recipes, presets, command-line overrides, clear errors."""

from __future__ import annotations

import json

import pytest

import main_pretrain
from patchmix.config import ConfigError, parse_config, recipe_names, save_config
from patchmix.methods import PatchMixConfig

RECIPES = recipe_names("pretrain")
PATCHMIX_RECIPES = [name for name in RECIPES if not name.startswith(("aps_", "dino_", "selfpatch_"))]
APS_RECIPES = [name for name in RECIPES if name.startswith("aps_")]


def parse(*argv: str) -> PatchMixConfig:
    return parse_config(PatchMixConfig, list(argv), kind="pretrain", description="")


def parse_any(*argv: str):
    """As main_pretrain.py does: the recipe (or --method) picks the method's config class."""
    from patchmix.methods import get_method
    return parse_config(lambda values: get_method(values.get("method", "patchmix")).config_class, list(argv),
                        kind="pretrain", description="")


def test_every_official_recipe_exists():
    for dataset in ("cifar10", "cifar100", "imagenet"):
        for arch in ("vit_tiny", "vit_small", "vit_base"):
            assert f"{dataset}_{arch}" in RECIPES


@pytest.mark.parametrize("name", PATCHMIX_RECIPES)
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_recipes_resolve(name, preset):
    cfg = parse("--config", name, "--preset", preset)
    assert cfg.preset == preset
    assert cfg.num_mix == (3 if preset == "paper" else 2)
    assert cfg.momentum_per_epoch == (preset == "official")
    if name != "demo":  # the CPU demo keeps full precision under both presets
        assert cfg.amp == ("fp16" if preset == "official" else "auto")


def test_recipe_values_follow_the_spec():
    cfg = parse("--config", "imagenet_vit_base")
    assert (cfg.img_size, cfg.patch_size, cfg.epochs, cfg.warmup_epochs, cfg.batch_size) == (224, 16, 300, 10, 1024)
    assert cfg.base_lr * cfg.batch_size / 256 == pytest.approx(3e-3)
    assert cfg.crop_min == 0.05 and cfg.local_crops_number == 0
    official = parse("--config", "imagenet_vit_base", "--preset", "official")
    assert official.local_crops_number == 8 and official.crop_min == 0.35
    tiny = parse("--config", "cifar100_vit_tiny")
    assert (tiny.base_lr, tiny.weight_decay, tiny.weight_decay_end, tiny.use_momentum) == (2e-3, 0.02, 0.2, True)
    assert not parse("--config", "cifar100_vit_tiny", "--preset", "official").use_momentum
    small = parse("--config", "cifar10_vit_small")
    assert (small.img_size, small.patch_size, small.crop_min, small.epochs, small.batch_size) == (32, 2, 0.1, 800, 512)
    assert small.temperature == 0.2 and small.o2o_smoothing == 0.1 and small.drop_path == 0.1


def test_command_line_overrides_config_and_preset():
    cfg = parse("--config", "cifar10_vit_small", "--preset", "official", "--num-mix", "4", "--num_heads", "6",
                "--no-use-momentum", "--blur-probs", "0.5", "0.5", "0.5")
    assert cfg.num_mix == 4 and cfg.num_heads == 6 and not cfg.use_momentum
    assert cfg.blur_probs == (0.5, 0.5, 0.5)


def test_unknown_flag_suggests_the_closest(capsys):
    with pytest.raises(SystemExit):
        parse("--config", "demo", "--num-mixx", "2")
    assert "Did you mean '--num-mix'" in capsys.readouterr().err


def test_unknown_config_and_key_errors(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'cifar10_vit_small'"):
        parse("--config", "cifar10_vit_smal")
    bad = tmp_path / "bad.py"
    bad.write_text("CONFIG = {'num_mixes': 2}\n")
    with pytest.raises(ConfigError, match="unknown config key 'num_mixes'.*Did you mean 'num_mix'"):
        parse("--config", str(bad))


def test_misspelled_choice_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="invalid dataset 'cifar11'.*Did you mean 'cifar10'"):
        parse("--config", "demo", "--dataset", "cifar11")
    bad = tmp_path / "bad.py"
    bad.write_text("CONFIG = {'arch': 'vit_smal'}\n")
    with pytest.raises(ConfigError, match="invalid arch 'vit_smal'.*Did you mean 'vit_small'"):
        parse("--config", str(bad))


def test_saved_config_is_json_and_round_trips(tmp_path):
    cfg = parse("--config", "cifar10_vit_small")
    save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_mix"] == 3 and saved["blur_probs"] == [1.0, 0.1, 0.5]
    assert PatchMixConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}) == cfg


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_pretrain.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("torchrun", "PatchMix and loss", "--num-mix", "paper 3, official code 2", "--preset"):
        assert needle in text


def test_no_arguments_is_the_demo_and_anything_else_needs_a_recipe():
    assert parse().output_dir == "output/demo"
    with pytest.raises(ConfigError, match="no --config given.*cifar10_vit_small.*no arguments at all"):
        parse("--dataset", "imagenet", "--data-path", "x")


@pytest.mark.parametrize("flag,value,message", [
    ("--base-lr", "-1", "--base-lr -1.0: it must be > 0"),
    ("--batch-size", "0", "--batch-size 0: it must be >= 1"),
    ("--blur-probs", "0.5 1.5 0.5", "--blur-probs \\(0.5, 1.5, 0.5\\): it must be >= 0 and <= 1"),
    ("--epochs", "0", "--epochs 0: it must be >= 1"),
    ("--temperature", "0", "--temperature 0.0: it must be > 0"),
])
def test_values_out_of_range_are_refused(flag, value, message):
    with pytest.raises(ConfigError, match=message):
        parse("--config", "demo", flag, *value.split())


def test_a_subclass_default_keeps_the_documentation_of_the_field():
    import dataclasses

    from patchmix.config import TrainConfig
    base = {f.name: f for f in dataclasses.fields(TrainConfig)}
    mine = {f.name: f for f in dataclasses.fields(PatchMixConfig)}
    assert mine["epochs"].default == 800 and base["epochs"].default == 100
    assert mine["epochs"].metadata == base["epochs"].metadata  # help, group and range come from the base
    assert mine["data_path"].metadata["run_only"] and not mine["num_mix"].metadata["run_only"]


def test_own_recipe_module_builds_on_a_shipped_one(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text("from patchmix.config import base_recipe\n"
                    "CONFIG = {**base_recipe('pretrain', 'cifar10_vit_small'), 'epochs': 100}\n")
    cfg = parse("--config", str(mine))
    assert (cfg.epochs, cfg.arch, cfg.img_size) == (100, "vit_small", 32)


def test_a_new_field_does_not_block_resuming_an_older_run():
    from patchmix.config import config_differences, config_to_dict
    cfg = parse("--config", "demo")
    saved = config_to_dict(cfg)
    del saved["method"]  # written before the field existed: it counts as its default
    saved["stop_after_epochs"] = 3  # a field that no longer exists is ignored
    assert config_differences(saved, cfg) == {}
    saved["num_mix"] = 2
    assert config_differences(saved, cfg) == {"num_mix": (2, 3)}
