"""One config system for the four entry scripts.

A run's configuration is resolved in this order, each step overriding the previous one:

1. the defaults of the script's dataclass below (every field documented; they are what ``--help`` shows);
2. a Python config module (``--config NAME`` looks for ``config/<kind>/NAME.py``; a path works too) that
   defines ``CONFIG = {...}``, usually built from a shared base dict plus the recipe's own overrides;
3. with ``--preset official``, the module's ``OFFICIAL = {...}`` dict: the values of the authors' released
   code where it differs from the paper (see the README's differences table);
4. command-line flags, one per field (``--num-mix 2`` or ``--num_mix 2``; booleans as ``--flag/--no-flag``).

The resolved config is saved as ``config.json`` in the output directory. Unknown keys, in a module or on the
command line, are errors that suggest the closest valid name.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["PretrainConfig", "parse_config", "load_config_module", "config_to_dict", "save_config",
           "config_differences", "CONFIG_DIR", "ConfigError"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
_group = "General"
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem the user must fix (message says how)."""


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A documented config field; the current ``_section`` becomes its --help group."""
    meta = {"help": help, "group": _group, "choices": choices}
    if isinstance(default, list):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


def _section(name: str) -> None:
    global _group
    _group = name


_section("Run")


@dataclass
class PretrainConfig:
    """PatchMix pretraining. Defaults are the shared recipe of the paper; config modules change the rest."""

    preset: str = _opt("paper", "paper: values of the paper; official: the authors' released code (m=2, "
                       "per-epoch momentum, ImageNet multi-crop, ViT-T without momentum encoder)",
                       ("paper", "official"))
    output_dir: str = _opt("output/pretrain", "directory for checkpoints, config.json, log.txt, TensorBoard; "
                           "re-running with the same directory resumes")
    resume: str = _opt("", "checkpoint to resume from; empty: OUTPUT_DIR/checkpoint.pth if it exists")
    allow_config_change: bool = _opt(False, "resume even if the saved config.json differs from this one")
    device: str = _opt("auto", "auto (a GPU if there is one), cpu, cuda or cuda:N")
    seed: int = _opt(7, "random seed (official 7); data augmentation depends only on (seed, epoch, image)")
    amp: str = _opt("auto", "mixed precision: auto = bf16 on GPUs that support it, none on the CPU",
                    ("auto", "bf16", "fp16", "none"))
    compile: bool = _opt(False, "torch.compile the backbones (GPU; first steps are slow while it compiles)")
    num_workers: int = _opt(8, "data-loading processes per training process")
    save_freq: int = _opt(100, "keep a numbered checkpoint every N epochs (checkpoint.pth is rewritten every "
                          "epoch)")
    log_freq: int = _opt(10, "write TensorBoard scalars every N steps")
    clip_grad: float = _opt(0.0, "clip the gradient norm to this value (0 = off, as in the official code)")
    stop_after_steps: int = _opt(0, "stop after this many steps of this invocation, saving a checkpoint as a "
                                 "pre-emption would (0 = run to the end); re-run the command to continue")
    dist_timeout_minutes: float = _opt(30.0, "how long a process waits for the others before failing")
    knn_eval: bool = _opt(False, "after training, report weighted-kNN accuracy of the learned features next "
                          "to that of a randomly initialised encoder")
    knn_train_subset: int = _opt(0, "images of the train split used as the kNN bank (0 = all)")
    knn_test_subset: int = _opt(0, "images of the test split classified by kNN (0 = all)")

    _section("Data")
    dataset: str = _opt("cifar10", "cifar10, cifar100, imagenet (DATA_PATH/train), folder (an ImageFolder "
                        "tree at DATA_PATH) or fashion_mnist", ("cifar10", "cifar100", "imagenet", "folder",
                                                               "fashion_mnist"))
    data_path: str = _opt("", "dataset root; empty = ./data for CIFAR, the usual places for Fashion-MNIST")
    download: bool = _opt(False, "download CIFAR / Fashion-MNIST with torchvision if missing (needs internet)")
    train_subset: int = _opt(0, "train on a fixed random subset of this many images (0 = all)")
    img_size: int = _opt(32, "side of the global crops in pixels")
    crop_min: float = _opt(0.1, "smallest crop area of RandomResizedCrop for the two global views (paper: "
                           "0.1 CIFAR, 0.05 ImageNet)")
    blur_probs: tuple[float, ...] = _opt((1.0, 0.1, 0.5), "Gaussian-blur probability of view 1, view 2 and "
                                         "the local crops")
    solarize_probs: tuple[float, ...] = _opt((0.0, 0.2), "solarisation probability of view 1 and view 2")
    color_jitter: tuple[float, ...] = _opt((0.4, 0.4, 0.2, 0.1), "brightness, contrast, saturation and hue "
                                           "strengths of the colour jitter (applied with p=0.8)")
    local_crops_number: int = _opt(0, "number of extra small crops, each also mixed (official ImageNet: 8)")
    local_crop_size: int = _opt(96, "side of the local crops in pixels")
    local_crop_scale: tuple[float, ...] = _opt((0.05, 0.35), "area range of the local crops")

    _section("Model")
    arch: str = _opt("vit_small", "vit_tiny (192-d, 3 heads), vit_small (384-d, 12 heads), vit_base (768-d, "
                     "12 heads)", ("vit_tiny", "vit_small", "vit_base"))
    patch_size: int = _opt(2, "ViT patch size = mixing unit (16 at 224 px, 2 at 32 px)")
    embed_dim: int = _opt(0, "override the width of ARCH (0 = keep)")
    depth: int = _opt(0, "override the number of blocks of ARCH (0 = keep)")
    num_heads: int = _opt(0, "override the number of attention heads of ARCH (0 = keep; the paper's table "
                          "says 6 for ViT-S, the released code and weights use 12)")
    drop_path: float = _opt(0.1, "stochastic depth of the online encoder (the momentum encoder has none)")
    proj_layers: int = _opt(3, "layers of the projector MLP")
    pred_layers: int = _opt(2, "layers of the predictor MLP")
    hidden_dim: int = _opt(4096, "hidden width of the projector and predictor")
    out_dim: int = _opt(256, "output width of the projector and predictor")
    use_momentum: bool = _opt(True, "momentum (EMA) key encoder; off = keys from the online network without "
                              "gradient (official ViT-Tiny code)")
    momentum: float = _opt(0.996, "EMA momentum at the start; it follows a cosine to 1")
    momentum_per_epoch: bool = _opt(False, "change the EMA momentum once per epoch, as the official code does "
                                    "by accident (default: every step)")
    fuse_backbone: bool = _opt(True, "run each encoder's backbone once per step on all its inputs of the same "
                               "resolution (the BatchNorm heads still see each view separately)")

    _section("PatchMix and loss")
    num_mix: int = _opt(3, "m, images per mixed image (paper 3, official code 2; 1 = no mixing)")
    o2o_smoothing: float = _opt(0.1, "label smoothing of the origin-to-origin targets (hard-coded 0.1 in the "
                                "official code)")
    mix_smoothing: float = _opt(0.0, "label smoothing of the mix-to-origin and mix-to-mix targets")
    o2o_weight: float = _opt(1.0, "weight of origin-to-origin (0 switches it off)")
    m2o_weight: float = _opt(0.5, "weight of mix-to-origin (0 switches it off)")
    m2m_weight: float = _opt(0.5, "weight of mix-to-mix (0 switches it off)")
    local_o2o_weight: float = _opt(1.0, "weight of the local crops' origin terms")
    local_m2o_weight: float = _opt(1.0, "weight of the local crops' mix terms")
    temperature: float = _opt(0.2, "softmax temperature after warm-up")
    warmup_temperature: float = _opt(0.2, "temperature at the start of the warm-up")
    warmup_temperature_epochs: float = _opt(30.0, "epochs of linear temperature warm-up")

    _section("Optimisation")
    epochs: int = _opt(800, "training epochs")
    warmup_epochs: float = _opt(100.0, "epochs of linear learning-rate warm-up")
    batch_size: int = _opt(512, "GLOBAL batch over all processes (each gets BATCH_SIZE / world size)")
    base_lr: float = _opt(5e-4, "learning rate for a batch of 256; peak lr = BASE_LR * BATCH_SIZE / 256")
    min_lr: float = _opt(1e-6, "learning rate at the end of the cosine")
    weight_decay: float = _opt(0.04, "AdamW weight decay at the start (biases and norms: none)")
    weight_decay_end: float = _opt(0.4, "weight decay at the end (cosine)")


_section("General")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown config key {key!r} in {where}.{_suggest(key, names)}")


def _coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Lists from JSON or config modules become tuples where the field is a tuple."""
    types = _field_types(cls)
    return {k: tuple(v) if isinstance(v, list) and typing.get_origin(types[k]) is tuple else v
            for k, v in values.items()}


def resolve_config_path(name: str, kind: str) -> Path:
    """``name`` is a path to a .py file or the stem of a file in ``config/<kind>/``."""
    path = Path(name)
    if path.suffix == ".py" and path.exists():
        return path
    candidate = CONFIG_DIR / kind / f"{name.removesuffix('.py')}.py"
    if candidate.exists():
        return candidate
    available = sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.py") if not p.stem.startswith("_"))
    raise ConfigError(f"config {name!r} not found (looked for the file {path} and for {candidate}). "
                      f"Available {kind} configs: {', '.join(available)}.{_suggest(path.stem, available)}")


def load_config_module(name: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the ``CONFIG`` and ``OFFICIAL`` dicts of a config module."""
    path = resolve_config_path(name, kind)
    if str(REPO_ROOT) not in sys.path:  # config modules import their shared base from the `config` package
        sys.path.insert(0, str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(f"_patchmix_config_{kind}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "CONFIG", None), dict):
        raise ConfigError(f"config module {path} must define a dict named CONFIG.")
    return dict(module.CONFIG), dict(getattr(module, "OFFICIAL", {}))


def _add_field_argument(group: argparse._ArgumentGroup, f: dataclasses.Field, ftype: Any) -> None:
    flags = [f"--{f.name.replace('_', '-')}"]
    if "_" in f.name:
        flags.append(f"--{f.name}")
    help_text = f.metadata.get("help", "") + " (default: %(default)s)"
    choices = f.metadata.get("choices")
    if ftype is bool:
        group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
    elif typing.get_origin(ftype) is tuple:
        item_type = typing.get_args(ftype)[0]
        group.add_argument(*flags, dest=f.name, type=item_type, nargs="+", help=help_text, metavar="V")
    else:
        metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
        group.add_argument(*flags, dest=f.name, type=ftype, help=help_text, metavar=metavar)


def build_parser(cls: type, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     usage="%(prog)s [--config NAME] [--preset {paper,official}] [--OPTION VALUE ...]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config module: a name in config/<kind>/ or a path")
    types = _field_types(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("group", "General")
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        _add_field_argument(groups[name], f, types[f.name])
    return parser


def parse_config(cls: type[T], argv: list[str] | None, kind: str, description: str,
                 default_config: str | None = None, epilog: str = "") -> T:
    """Resolve defaults < config module < official preset < command line into a ``cls`` instance."""
    parser = build_parser(cls, description, epilog)
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=default_config)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)

    values: dict[str, Any] = {}
    if known.config:
        config_values, official = load_config_module(known.config, kind)
        _check_keys(cls, config_values, f"config {known.config!r}")
        _check_keys(cls, official, f"OFFICIAL of config {known.config!r}")
        values.update(config_values)
        preset = known.preset or values.get("preset", "paper")
        if preset == "official":
            values.update(official)
            values["preset"] = "official"
    defaults = {f.name: getattr(cls, f.name, f.default) for f in dataclasses.fields(cls)}
    defaults.update(_coerce(cls, values))
    parser.set_defaults(**defaults, config=known.config)

    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [s for action in parser._actions for s in action.option_strings]
        first = unknown[0]
        parser.error(f"unrecognized argument {first!r}.{_suggest(first.split('=')[0], options)}")
    resolved = {k: v for k, v in vars(args).items() if k != "config"}
    _check_choices(cls, resolved)
    return cls(**_coerce(cls, resolved))


def _check_choices(cls: type, values: dict[str, Any]) -> None:
    """Values outside a field's choices are errors that name the closest valid one."""
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and values.get(f.name) not in choices:
            value = values.get(f.name)
            raise ConfigError(f"invalid {f.name} {value!r}; choose one of {', '.join(choices)}."
                              f"{_suggest(str(value), list(choices))}")


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config dicts (``{key: (saved, current)}``)."""
    keys = (set(saved) | set(current)) - set(ignore)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


# --------------------------------------------------------------------------------------------------------------
# Evaluation configs (main_knn.py, main_linear.py, main_finetune.py). Their defaults are the protocols of the
# official evaluation code (spec section 5) except where noted; config modules in config/{knn,linear,finetune}/
# set the dataset and recipe, and their OFFICIAL dicts the authors' deviations (--preset official).

_section("Run")


@dataclass
class EvalConfig:
    """Settings every evaluation script shares: the weights to evaluate, the data, the run."""

    preset: str = _opt("paper", "paper: the standard protocol; official: the authors' released evaluation code "
                       "where it differs (e.g. CIFAR test images resized 32 -> 36, then centre-cropped to 32)",
                       ("paper", "official"))
    output_dir: str = _opt("output/eval", "directory for results.json, config.json, log.txt and checkpoints")
    device: str = _opt("auto", "auto (a GPU if there is one), cpu, cuda or cuda:N")
    seed: int = _opt(7, "random seed")
    amp: str = _opt("auto", "mixed precision: auto = bf16 on GPUs that support it, none on the CPU",
                    ("auto", "bf16", "fp16", "none"))
    num_workers: int = _opt(8, "data-loading processes per process")
    dist_timeout_minutes: float = _opt(30.0, "how long a process waits for the others before failing")

    _section("Weights")
    pretrained_weights: str = _opt("", "weights to evaluate: a checkpoint (ours at any stage, or an official "
                                   "PatchMix file), a URL, or a released name such as cifar10-vit-tiny-pretrain "
                                   "(list: python -m patchmix.weights list)")
    encoder: str = _opt("momentum_encoder", "encoder of a pretraining checkpoint: momentum_encoder (official) or "
                        "base_encoder (the online one); checkpoints without a momentum encoder fall back to "
                        "base_encoder with a note")
    checkpoint_key: str = _opt("", "entry of the file that holds the state dict (empty: the usual ones, "
                               "e.g. model, state_dict; model_ema selects a fine-tuning run's EMA weights)")
    allow_pickle: bool = _opt(False, "trust the file and let torch.load(weights_only=False) run the code it "
                              "pickles; without it, pickled modules (official best.pth) are read by a "
                              "restricted unpickler that only extracts tensors")
    weights_dir: str = _opt("", "folder searched for hand-downloaded released files (empty: "
                            "$PATCHMIX_WEIGHTS_DIR or ./weights)")
    arch: str = _opt("", "ViT size; empty = from the weights (vit_tiny 192-d/3 heads, vit_small 384-d/12, "
                     "vit_base 768-d/12)", ("", "vit_tiny", "vit_small", "vit_base"))
    patch_size: int = _opt(0, "ViT patch size; 0 = from the weights")
    num_heads: int = _opt(0, "attention heads; 0 = from the checkpoint, else the official value of the "
                          "architecture (heads cannot be read off tensor shapes)")

    _section("Data")
    dataset: str = _opt("cifar10", "cifar10, cifar100, imagenet (DATA_PATH/train and DATA_PATH/val), folder "
                        "(same layout, any classes) or fashion_mnist", ("cifar10", "cifar100", "imagenet",
                                                                       "folder", "fashion_mnist"))
    data_path: str = _opt("", "dataset root; empty = ./data for CIFAR, the usual places for Fashion-MNIST")
    download: bool = _opt(False, "download CIFAR / Fashion-MNIST with torchvision if missing (needs internet)")
    train_subset: int = _opt(0, "use a fixed random subset of this many training images (0 = all)")
    test_subset: int = _opt(0, "use a fixed random subset of this many test images (0 = all)")
    img_size: int = _opt(0, "input resolution; 0 = the resolution the weights were trained at")
    crop_pct: float = _opt(1.0, "test images: resize to IMG_SIZE / CROP_PCT (bicubic), centre-crop IMG_SIZE "
                           "(ImageNet 0.875 = 256 -> 224; official CIFAR kNN/linear 0.8889 = 36 -> 32)")
    batch_size: int = _opt(256, "GLOBAL batch over all processes")


_section("kNN")


@dataclass
class KnnConfig(EvalConfig):
    """Weighted k-nearest-neighbour classification of frozen CLS features (DINO protocol)."""

    nb_knn: tuple[int, ...] = _opt((10, 20, 100, 200), "numbers of neighbours to report")
    headline_k: int = _opt(20, "the k reported as the headline number (DINO convention 20)")
    temperature: float = _opt(0.07, "T of the vote weights exp(similarity / T)")
    chunk_size: int = _opt(256, "test images per similarity matrix (memory ~ CHUNK_SIZE x bank size)")
    fp16_features: bool = _opt(False, "keep the feature bank in float16 (half the memory)")
    dump_features: str = _opt("", "save the extracted features and labels to this file")
    load_features: str = _opt("", "skip the model: classify the features saved by --dump-features in this file")


_section("Training")


@dataclass
class ClassifierConfig(EvalConfig):
    """Shared by the linear probe and fine-tuning: a classifier trained on top of pretrained weights."""

    resume: str = _opt("", "checkpoint to resume from; empty: OUTPUT_DIR/checkpoint.pth if it exists")
    allow_config_change: bool = _opt(False, "resume even if the saved config.json differs from this one")
    eval_only: bool = _opt(False, "only evaluate: the weights must hold a classifier head (a linear / "
                           "fine-tuning checkpoint, ours or official)")
    epochs: int = _opt(100, "training epochs")
    warmup_epochs: float = _opt(0.0, "epochs of linear learning-rate warm-up")
    base_lr: float = _opt(0.0, "learning rate for a batch of 256 (lr = BASE_LR x BATCH_SIZE / 256); 0 = the "
                          "official value for the architecture")
    min_lr: float = _opt(0.0, "learning rate at the end of the cosine")
    weight_decay: float = _opt(0.0, "weight decay")
    lr_per_epoch: bool = _opt(False, "change the learning rate once per epoch like the official code "
                              "(default: every step)")
    clip_grad: float = _opt(0.0, "clip the gradient norm to this value (0 = off)")
    log_freq: int = _opt(20, "write TensorBoard scalars every N steps")
    stop_after_epochs: int = _opt(0, "stop after this many epochs of this invocation, as a pre-emption would "
                                  "(0 = run to the end); re-run the same command to continue")


@dataclass
class LinearConfig(ClassifierConfig):
    """Linear probe: a linear classifier on the frozen CLS token (official protocol by default)."""

    momentum: float = _opt(0.9, "SGD momentum (Nesterov, as timm's 'sgd' in the official code)")
    batchnorm: bool = _opt(False, "BatchNorm1d without affine before the classifier (MAE / MoCo v3 probe); "
                           "off in the official PatchMix code")
    crop_min: float = _opt(0.08, "smallest RandomResizedCrop area of the training images")
    head_init_std: float = _opt(0.0, "initialise the classifier N(0, std), bias 0 (MoCo v3: 0.01); 0 = "
                                "PyTorch's default init, as the official code")


@dataclass
class FinetuneConfig(ClassifierConfig):
    """End-to-end fine-tuning with the official timm recipe (RandAugment, Mixup/CutMix, layer decay)."""

    warmup_epochs: float = _opt(10.0, "epochs of linear learning-rate warm-up")
    warmup_lr: float = _opt(1e-6, "learning rate at the start of the warm-up")
    min_lr: float = _opt(1e-5, "learning rate at the end of the cosine")
    weight_decay: float = _opt(0.05, "AdamW weight decay (none on biases, norms, pos_embed and cls_token)")
    layer_decay: float = _opt(0.75, "layer-wise learning-rate decay (timm param_groups_layer_decay)")
    drop_path: float = _opt(0.1, "stochastic depth")
    auto_augment: str = _opt("rand-m9-mstd0.5-inc1", "timm RandAugment policy (empty = off)")
    color_jitter: float = _opt(0.4, "colour jitter (ignored by timm when AUTO_AUGMENT is set)")
    crop_min: float = _opt(0.08, "smallest RandomResizedCrop area")
    crop_padding: int = _opt(0, "use RandomCrop(IMG_SIZE, padding=N) instead of RandomResizedCrop (official "
                             "CIFAR recipe: 4); 0 = RandomResizedCrop")
    reprob: float = _opt(0.25, "RandomErasing probability")
    remode: str = _opt("pixel", "RandomErasing fill mode", ("const", "rand", "pixel"))
    recount: int = _opt(1, "RandomErasing count")
    mixup: float = _opt(0.8, "Mixup alpha (0 = off)")
    cutmix: float = _opt(1.0, "CutMix alpha (0 = off)")
    mixup_prob: float = _opt(1.0, "probability of applying Mixup or CutMix to a batch")
    mixup_switch_prob: float = _opt(0.5, "probability of CutMix instead of Mixup when both are on")
    mixup_mode: str = _opt("batch", "Mixup/CutMix parameters per batch, pair or element",
                           ("batch", "pair", "elem"))
    smoothing: float = _opt(0.1, "label smoothing")
    model_ema: bool = _opt(False, "keep an EMA of the weights (timm ModelEmaV3), evaluate and save it too")
    model_ema_decay: float = _opt(0.99996, "EMA decay per step")


_section("General")

__all__ += ["EvalConfig", "KnnConfig", "ClassifierConfig", "LinearConfig", "FinetuneConfig"]
