"""One config system for the four entry scripts: typed fields, recipe modules, presets, command-line flags.

A run's configuration is resolved in this order, each step overriding the previous one:

1. the defaults of the script's config dataclass (every field documented; they are what ``--help`` shows);
2. a recipe, a Python module (``--config NAME`` looks for ``config/<kind>/NAME.py``; a path works too) that
   defines ``CONFIG = {...}``, usually a shared base dict plus the recipe's own overrides;
3. with ``--preset official``, the recipe's ``OFFICIAL = {...}`` dict: the values of the authors' released
   code where it differs from the paper (see the README's difference tables);
4. command-line flags, one per field (``--num-mix 2`` or ``--num_mix 2``; booleans as ``--flag/--no-flag``).

A field is declared once, with :func:`option` (or the group helpers :data:`RUN`, :data:`DATA`, ...), which
records its help text, ``--help`` group, choices, valid range and whether it is *run-only* (may change when a
run is resumed without changing what it computes) in the field's metadata. A subclass that only changes a
default writes ``epochs: int = 100``: :func:`configclass` keeps the documentation of the field it overrides.

Running a script with no arguments at all uses its ``demo`` recipe; any other command must name a recipe, so
that a real dataset is never trained with the demo's toy settings by accident. Every problem (unknown key or
flag, invalid choice, value out of range, missing recipe) is a :class:`ConfigError` whose one-line message names
the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import json
import sys
import types
import typing
from dataclasses import MISSING, Field, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = ["ConfigError", "option", "configclass", "RUN", "DATA", "MODEL", "OPTIM", "WEIGHTS", "RunConfig",
           "TrainConfig", "EvalConfig", "parse_config", "recipe_names", "load_recipe", "base_recipe",
           "config_to_dict", "save_config", "config_differences", "run_only_keys", "CONFIG_DIR", "suggest"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
_RECIPES_PACKAGE = "patchmix_recipes"  # the import name of config/ (its modules use relative imports)
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem the user must fix (the message says how)."""


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """`` Did you mean 'x'?`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------------------------
# Declaring fields


def option(default: Any, help: str, *, group: str, choices: tuple | None = None, run_only: bool = False,
           at_least: float | None = None, above: float | None = None, at_most: float | None = None) -> Any:
    """A documented config field.

    Args:
        group: the ``--help`` section it is listed under.
        choices: the only valid values (a typo gets the closest one suggested).
        run_only: changing it between a run and its resumption does not change what is computed (output
            directory, workers, logging ...): such differences do not make a resume refuse.
        at_least / above / at_most: the valid range (for tuples: of every element).
    """
    if isinstance(default, list):
        raise TypeError("use tuples for sequence defaults")
    meta = {"help": help, "group": group, "choices": choices, "run_only": run_only, "at_least": at_least,
            "above": above, "at_most": at_most}
    return field(default=default, metadata=meta)


RUN = partial(option, group="Run")
DATA = partial(option, group="Data")
MODEL = partial(option, group="Model")
OPTIM = partial(option, group="Optimisation")
WEIGHTS = partial(option, group="Weights")


def configclass(cls: type[T]) -> type[T]:
    """``dataclass``, plus: a field redeclared with a plain default keeps the metadata (help, group, range) of
    the field of a base class it overrides, so a subclass changes a default without repeating its help."""
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            inherited.update({f.name: f for f in dataclasses.fields(base)})
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, MISSING)
        if name in inherited and value is not MISSING and not isinstance(value, Field):
            setattr(cls, name, field(default=value, metadata=inherited[name].metadata))
    return dataclass(cls)


# --------------------------------------------------------------------------------------------------------------
# The fields every script shares


@configclass
class RunConfig:
    """What every script has: the run, the data, the global batch."""

    preset: str = RUN("paper", "paper: the paper's values and the standard protocols; official: the authors' "
                      "released code where it differs (the README's difference tables)", choices=("paper", "official"))
    output_dir: str = RUN("output/run", "directory for checkpoints, config.json, log.txt, results; re-running "
                          "with the same directory resumes", run_only=True)
    device: str = RUN("auto", "auto (a GPU if there is one), cpu, cuda or cuda:N", run_only=True)
    seed: int = RUN(7, "random seed (official 7)")
    amp: str = RUN("auto", "mixed precision: auto = bf16 on GPUs that support it, none on the CPU",
                   choices=("auto", "bf16", "fp16", "none"))
    num_workers: int = RUN(8, "data-loading processes per process", run_only=True, at_least=0)
    dist_timeout_minutes: float = RUN(30.0, "how long a process waits for the others before failing",
                                      run_only=True, above=0)
    wandb: str = RUN("", "also log to this Weights & Biases project (pip install 'patchmix[wandb]'; "
                     "WANDB_MODE=offline writes the run locally); a resumed run continues the same W&B run",
                     run_only=True)

    dataset: str = DATA("cifar10", "cifar10, cifar100, imagenet (DATA_PATH/train and DATA_PATH/val), folder "
                        "(an ImageFolder tree at DATA_PATH) or fashion_mnist",
                        choices=("cifar10", "cifar100", "imagenet", "folder", "fashion_mnist"))
    data_path: str = DATA("", "dataset root; empty = ./data for CIFAR, the usual places for Fashion-MNIST",
                          run_only=True)
    download: bool = DATA(False, "download CIFAR / Fashion-MNIST with torchvision if missing (needs internet)",
                          run_only=True)
    train_subset: int = DATA(0, "use a fixed random subset of this many training images (0 = all)", at_least=0)
    batch_size: int = DATA(256, "GLOBAL batch over all processes (each gets BATCH_SIZE / number of processes)",
                           at_least=1)


@configclass
class TrainConfig(RunConfig):
    """What every training script adds: resume, stopping, logging, the optimisation schedule."""

    resume: str = RUN("", "checkpoint to resume from; empty: OUTPUT_DIR/checkpoint.pth if it exists",
                      run_only=True)
    allow_config_change: bool = RUN(False, "resume even if the saved config.json differs from this one",
                                    run_only=True)
    stop_after_steps: int = RUN(0, "stop after this many optimiser steps of this invocation (at the end of the "
                                "loaded batch that reaches them), saving a checkpoint as a pre-emption would (0 = "
                                "run to the end); re-run the command to continue", run_only=True, at_least=0)
    log_freq: int = RUN(10, "write TensorBoard scalars every N steps", run_only=True, at_least=1)

    epochs: int = OPTIM(100, "training epochs", at_least=1)
    warmup_epochs: float = OPTIM(0.0, "epochs of linear learning-rate warm-up", at_least=0)
    base_lr: float = OPTIM(5e-4, "learning rate for a batch of 256; peak lr = BASE_LR x BATCH_SIZE / 256",
                           above=0)
    min_lr: float = OPTIM(0.0, "learning rate at the end of the cosine", at_least=0)
    weight_decay: float = OPTIM(0.0, "weight decay", at_least=0)
    clip_grad: float = OPTIM(0.0, "clip the gradient norm to this value (0 = off)", at_least=0)


@configclass
class EvalConfig(RunConfig):
    """What every evaluation script adds: the weights to evaluate and the test split."""

    output_dir: str = "output/eval"

    pretrained_weights: str = WEIGHTS("", "weights to evaluate: a checkpoint (ours at any stage, or an official "
                                      "PatchMix, APS, DINO or SelfPatch file), a URL, or a released name such as "
                                      "cifar10-vit-tiny-pretrain (list: python -m patchmix.weights list)")
    encoder: str = WEIGHTS("momentum_encoder", "encoder of a pretraining checkpoint: momentum_encoder "
                           "(official) or base_encoder (the online one); checkpoints without a momentum encoder "
                           "fall back to base_encoder with a note")
    checkpoint_key: str = WEIGHTS("", "entry of the file that holds the state dict (empty: the usual ones, "
                                  "e.g. model, state_dict, a DINO / SelfPatch checkpoint's teacher; model_ema "
                                  "selects a fine-tuning run's EMA weights, student the DINO / SelfPatch student)")
    allow_pickle: bool = WEIGHTS(False, "trust the file and let torch.load(weights_only=False) run the code it "
                                 "pickles; without it, pickled modules (official best.pth) are read by a "
                                 "restricted unpickler that only extracts tensors", run_only=True)
    weights_dir: str = WEIGHTS("", "folder searched for hand-downloaded released files (empty: "
                               "$PATCHMIX_WEIGHTS_DIR or ./weights)", run_only=True)
    arch: str = WEIGHTS("", "ViT size; empty = from the weights (vit_tiny 192-d/3 heads, vit_small 384-d/12, "
                        "vit_base 768-d/12)", choices=("", "vit_tiny", "vit_small", "vit_base"))
    patch_size: int = WEIGHTS(0, "ViT patch size; 0 = from the weights", at_least=0)
    num_heads: int = WEIGHTS(0, "attention heads; 0 = from the checkpoint, else the official value of the "
                             "architecture (heads cannot be read off tensor shapes)", at_least=0)

    test_subset: int = DATA(0, "use a fixed random subset of this many test images (0 = all)", at_least=0)
    img_size: int = DATA(0, "input resolution; 0 = the resolution the weights were trained at", at_least=0)
    crop_pct: float = DATA(0.0, "test images: resize to IMG_SIZE / CROP_PCT (bicubic), centre-crop IMG_SIZE; "
                           "0 = the dataset's standard (ImageNet 0.875 = 256 -> 224, others 1.0; official "
                           "CIFAR kNN/linear 0.8889 = 36 -> 32)", at_least=0, at_most=1)


# --------------------------------------------------------------------------------------------------------------
# Recipes


def recipe_names(kind: str) -> list[str]:
    """The recipes of ``config/<kind>/`` (file stems, without the ``_shared`` helpers)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.py") if not p.stem.startswith("_"))


def _recipes_package() -> None:
    """Make ``config/`` importable as ``patchmix_recipes`` so recipes import their bases relatively.

    This finds the recipes next to the package (a checkout, or an editable install of it) without putting the
    repository on ``sys.path`` (which would let a folder named ``config`` shadow other packages).
    """
    if _RECIPES_PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(_RECIPES_PACKAGE, CONFIG_DIR / "__init__.py",
                                                  submodule_search_locations=[str(CONFIG_DIR)])
    if spec is None or spec.loader is None:
        raise ConfigError(f"the recipe folder {CONFIG_DIR} is missing; run from a checkout of the repository "
                          f"(pip install -e .), or pass --config a path to your own recipe module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_RECIPES_PACKAGE] = module
    spec.loader.exec_module(module)


def _import_recipe(name: str, kind: str) -> types.ModuleType:
    path = Path(name)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist.")
        spec = importlib.util.spec_from_file_location(f"_patchmix_user_recipe_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    available = recipe_names(kind)
    if name not in available:
        raise ConfigError(f"config {name!r} not found in config/{kind}/.{suggest(name, available)} Available "
                          f"{kind} recipes: {', '.join(available)}; or pass the path of your own .py module.")
    _recipes_package()
    return importlib.import_module(f"{_RECIPES_PACKAGE}.{kind}.{name}")


def load_recipe(name: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``CONFIG`` and ``OFFICIAL`` dicts of a recipe (a name in ``config/<kind>/`` or a path)."""
    module = _import_recipe(name, kind)
    if not isinstance(getattr(module, "CONFIG", None), dict):
        raise ConfigError(f"config module {name} must define a dict named CONFIG.")
    return dict(module.CONFIG), dict(getattr(module, "OFFICIAL", {}))


def base_recipe(kind: str, name: str) -> dict[str, Any]:
    """A recipe's ``CONFIG``, for your own recipe module to build on:
    ``CONFIG = {**base_recipe("pretrain", "cifar10_vit_small"), "epochs": 100}``."""
    return load_recipe(name, kind)[0]


# --------------------------------------------------------------------------------------------------------------
# Command line


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional_bool(ftype: Any) -> bool:
    return typing.get_origin(ftype) in (typing.Union, types.UnionType) and set(typing.get_args(ftype)) == {
        bool, type(None)}


def _add_argument(group: argparse._ArgumentGroup, f: Field, ftype: Any) -> None:
    flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
    help_text = f.metadata.get("help", "") + " (default: %(default)s)"
    choices = f.metadata.get("choices")
    if ftype is bool or _is_optional_bool(ftype):
        group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
    elif typing.get_origin(ftype) is tuple:
        group.add_argument(*flags, dest=f.name, type=typing.get_args(ftype)[0], nargs="+", help=help_text,
                           metavar="V")
    else:
        metavar = "{" + ",".join(c or "''" for c in choices) + "}" if choices else f.name.upper()
        group.add_argument(*flags, dest=f.name, type=ftype, help=help_text, metavar=metavar)


def _build_parser(cls: type, kind: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [--config NAME] [--preset {paper,official}] [--OPTION VALUE ...]",
        epilog=f"recipes (--config): {', '.join(recipe_names(kind))}")
    parser.add_argument("--config", default=None,
                        help=f"recipe: a name in config/{kind}/ or the path of a .py module (required, except "
                             f"that no arguments at all run the demo recipe)")
    types_ = _field_types(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("group", "General")
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        _add_argument(groups[name], f, types_[f.name])
    return parser


def _coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Lists (JSON, recipes) become tuples where the field is a tuple."""
    types_ = _field_types(cls)
    return {k: tuple(v) if isinstance(v, list) and typing.get_origin(types_[k]) is tuple else v
            for k, v in values.items()}


def _check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown config key {key!r} in {where}.{suggest(key, names)}")


def _check_values(cls: type, values: dict[str, Any]) -> None:
    """Choices and ranges of every field; the message names the field, the value and what is valid."""
    for f in dataclasses.fields(cls):
        value = values[f.name]
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"invalid {f.name} {value!r}; choose one of {', '.join(map(repr, choices))}."
                              f"{suggest(str(value), [c for c in choices if c])}")
        low, above, high = f.metadata.get("at_least"), f.metadata.get("above"), f.metadata.get("at_most")
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if not isinstance(item, (int, float)) or isinstance(item, bool):
                continue
            if ((low is not None and item < low) or (above is not None and item <= above)
                    or (high is not None and item > high)):
                valid = " and ".join(text for text in (
                    f">= {low:g}" if low is not None else "", f"> {above:g}" if above is not None else "",
                    f"<= {high:g}" if high is not None else "") if text)
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"invalid {flag} {value!r}: it must be {valid}.")


def parse_config(resolve: type[T] | Callable[[dict[str, Any]], type[T]], argv: list[str] | None, kind: str,
                 description: str, demo: str = "demo") -> T:
    """Resolve defaults < recipe < official preset < command line into a config instance.

    ``resolve`` is the config class, or a function that picks it from the recipe's values and the command
    line's ``--method`` (pretraining: each method has its own config class).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("--config", "--preset", "--method"):
        pre.add_argument(name, default=None)
    known, _ = pre.parse_known_args(argv)
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    config = known.config or (demo if not argv else None)
    if config is None and not wants_help:
        raise ConfigError(f"no --config given. Name a recipe of config/{kind}/ ({', '.join(recipe_names(kind))}) "
                          f"or the path of your own .py module; run the script with no arguments at all for "
                          f"the CPU demo.")

    values: dict[str, Any] = {}
    official: dict[str, Any] = {}
    if config:
        values, official = load_recipe(config, kind)
    selection = dict(values, **({"method": known.method} if known.method else {}))
    cls = resolve(selection) if not isinstance(resolve, type) else resolve
    if config:
        _check_keys(cls, values, f"config {config!r}")
        _check_keys(cls, official, f"OFFICIAL of config {config!r}")
        if (known.preset or values.get("preset", "paper")) == "official":
            values.update(official, preset="official")

    parser = _build_parser(cls, kind, description)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    parser.set_defaults(**{**defaults, **_coerce(cls, values)}, config=config)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [s for action in parser._actions for s in action.option_strings]
        first = unknown[0]
        parser.error(f"unrecognized argument {first!r}.{suggest(first.split('=')[0], options)}")
    resolved = _coerce(cls, {k: v for k, v in vars(args).items() if k != "config"})
    _check_values(cls, resolved)
    return cls(**resolved)


# --------------------------------------------------------------------------------------------------------------
# Saving and comparing


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def run_only_keys(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("run_only"))


def config_differences(saved: dict[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between a saved ``config.json`` and ``cfg``, except run-only ones.

    A key the saved run lacks (a field added since) counts as its default; a saved key that no longer exists is
    ignored.
    """
    cls = type(cfg)
    defaults = config_to_dict(cls())
    current = config_to_dict(cfg)
    saved = {**defaults, **{k: v for k, v in saved.items() if k in current}}
    ignore = run_only_keys(cls)
    return {k: (saved[k], current[k]) for k in sorted(current) if k not in ignore and saved[k] != current[k]}
