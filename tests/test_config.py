"""The config system: recipes, presets, command-line overrides, clear errors."""

from __future__ import annotations

import json

import pytest

import main_pretrain
from patchmix.config import CONFIG_DIR, ConfigError, PretrainConfig, parse_config, save_config

RECIPES = sorted(p.stem for p in (CONFIG_DIR / "pretrain").glob("*.py") if not p.stem.startswith("_"))


def parse(*argv: str) -> PretrainConfig:
    return parse_config(PretrainConfig, list(argv), kind="pretrain", description="", default_config="demo")


def test_every_official_recipe_exists():
    for dataset in ("cifar10", "cifar100", "imagenet"):
        for arch in ("vit_tiny", "vit_small", "vit_base"):
            assert f"{dataset}_{arch}" in RECIPES


@pytest.mark.parametrize("name", RECIPES)
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
        parse("--num-mixx", "2")
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
        parse("--dataset", "cifar11")
    bad = tmp_path / "bad.py"
    bad.write_text("CONFIG = {'arch': 'vit_smal'}\n")
    with pytest.raises(ConfigError, match="invalid arch 'vit_smal'.*Did you mean 'vit_small'"):
        parse("--config", str(bad))


def test_saved_config_is_json_and_round_trips(tmp_path):
    cfg = parse("--config", "cifar10_vit_small")
    save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_mix"] == 3 and saved["blur_probs"] == [1.0, 0.1, 0.5]
    assert PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}) == cfg


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_pretrain.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("torchrun", "PatchMix and loss", "--num-mix", "paper 3, official code 2", "--preset"):
        assert needle in text
