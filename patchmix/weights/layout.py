"""One loader for every PatchMix weight file, the released weights by name, and export to plain timm backbones.

Wherever a script asks for weights (``--pretrained-weights``) it accepts

* a local file: our checkpoints at any stage (pretraining, linear probe, fine-tuning, exported backbones,
  ``.safetensors``); the official pretraining files (``{"state_dict": {base_encoder.*, momentum_encoder.*,
  predictor.*}, ...}``, with or without the DDP ``module.`` prefix, and ``last.pth = {"state_dict"}``); the
  official linear / fine-tuning files (``{"epoch", "arch", "state_dict", "acc_best", ...}`` and ``best.pth``,
  which is a whole pickled ``nn.Module``);
* a URL (downloaded once by torch.hub into ``$TORCH_HOME/hub/checkpoints``; Hugging Face URLs, including the
  README's ``/blob/main/`` links, go through the Hugging Face cache instead);
* the name of a released file, e.g. ``cifar10-vit-tiny-pretrain`` (``python -m patchmix.weights list``),
  downloaded with ``huggingface_hub`` (cached, resumable), or found in ``--weights-dir`` when downloaded by hand.

:func:`load_weights` returns a plain timm backbone state dict (no head, no prefix) plus the ``build_backbone``
arguments it needs and a description of what was found; :func:`build_model` turns that into a ready
``VisionTransformer``.

Safety: files are read with ``torch.load(weights_only=True)``, which runs no code. A file that pickles whole
Python objects (the official ``best.pth``) is then read by a restricted unpickler that resolves no class
outside a handful of torch tensor-rebuilding functions: every other class becomes an inert placeholder, nothing
is imported, no code from the file runs, and the tensors are collected from the placeholders' recorded module
state. ``allow_pickle=True`` (``--allow-pickle``) falls back to ``torch.load(weights_only=False)``, which
executes whatever the file contains: use it only for files you trust, when the restricted reader fails.

Command line::

    python -m patchmix.weights list                           # the released files, as a table
    python -m patchmix.weights info SOURCE                    # what the loader finds in a file / name / URL
    python -m patchmix.weights download NAME                  # fetch a released file into the cache
    python -m patchmix.weights export SOURCE --out DIR        # plain timm backbone: .pth + .safetensors
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import pickle
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn

from patchmix.data import IMAGENET_MEAN, IMAGENET_STD
from patchmix.models import ARCHS, build_backbone

__all__ = ["REPO_ID", "ReleasedWeights", "RELEASED", "QUIRKS", "get_released", "format_registry", "WeightsError",
           "WeightsMismatchError", "LoadedWeights", "resolve_weights", "read_weights_file", "load_weights",
           "infer_backbone", "build_model", "build_head", "timm_model_name", "export_backbone",
           "default_weights_dir", "hub_model", "main"]

REPO_ID = "visresearch/PatchMix"
_HUB_URL = "https://huggingface.co/{repo}/resolve/{revision}/{path}"


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched or read; the message names the file and the fix."""


class WeightsMismatchError(WeightsError):
    """The tensors of a file do not fit the requested ViT; the message lists them and what the file holds."""


# --------------------------------------------------------------------------------------------------------------
# Released weights (Hugging Face repo visresearch/PatchMix; spec 6.4)


@dataclass(frozen=True)
class ReleasedWeights:
    """One released file: what it is, the paper's number for it and where it lives on the hub."""

    name: str          # registry name, e.g. "cifar10-vit-tiny-pretrain"
    dataset: str       # cifar10 / cifar100 / imagenet (our dataset names)
    arch: str          # vit_tiny / vit_small / vit_base
    patch_size: int
    img_size: int
    epochs: int        # pretraining epochs
    protocol: str      # pretrain / linear / finetune
    top1: float        # reported top-1 (kNN for the pretraining files)
    path: str          # path inside the hub repo
    note: str = ""
    repo_id: str = REPO_ID
    revision: str = "main"

    @property
    def url(self) -> str:
        return _HUB_URL.format(repo=self.repo_id, revision=self.revision, path=self.path)

    @property
    def metric(self) -> str:
        return {"pretrain": "kNN", "linear": "linear", "finetune": "fine-tune"}[self.protocol]

    @property
    def num_heads(self) -> int:
        return ARCHS[self.arch].num_heads

    def backbone_kwargs(self) -> dict[str, Any]:
        spec = ARCHS[self.arch]
        return {"arch": self.arch, "img_size": self.img_size, "patch_size": self.patch_size,
                "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads}


_FILE_NAME_NOTE = ("the file name says 84.6, the README table and the paper (Table 3) say 84.9; this entry "
                   "reports 84.9")
_C100_BASE_NOTE = ("README quirk: its link for this model points at the ViT-T file "
                   "finetune/cifar100/vit-tiny-800-84.6.pth; this path follows the older OneDrive name "
                   "(vit-base-800-86.0.pth) and was not verified on the hub. If the download gives a 404, the file "
                   "is not released there; if the loader reports a 192-d ViT, you got the ViT-T file")
_TINY_NOTE = "official ViT-T recipe trains without a momentum encoder: kNN/linear/fine-tune use base_encoder"

# (dataset, arch, patch, img, epochs, hub folder name per protocol, {protocol: (file stem, top1, note)})
_TABLE: list[tuple[str, str, int, int, int, dict[str, tuple[str, float, str]]]] = [
    ("imagenet", "vit_small", 16, 224, 300, {
        "finetune": ("finetune/imagenet-1k/vit-small-300-82.8.pth", 82.8, ""),
        "linear": ("linear/imagenet1k/vit-small-300-77.4.pth", 77.4, ""),
        "pretrain": ("pretrain/imagenet1k/vit-small-300-73.3.pth", 73.3, "")}),
    ("imagenet", "vit_base", 16, 224, 300, {
        "finetune": ("finetune/imagenet-1k/vit-base-300-84.1.pth", 84.1, ""),
        "linear": ("linear/imagenet1k/vit-base-300-80.2.pth", 80.2, ""),
        "pretrain": ("pretrain/imagenet1k/vit-base-300-76.2.pth", 76.2, "")}),
    ("cifar10", "vit_tiny", 2, 32, 800, {
        "finetune": ("finetune/cifar10/vit-tiny-800-97.5.pth", 97.5, ""),
        "linear": ("linear/cifar10/vit-tiny-800-94.4.pth", 94.4, ""),
        "pretrain": ("pretrain/cifar10/vit-tiny-800-92.9.pth", 92.9, _TINY_NOTE)}),
    ("cifar10", "vit_small", 2, 32, 800, {
        "finetune": ("finetune/cifar10/vit-small-800-98.1.pth", 98.1, ""),
        "linear": ("linear/cifar10/vit-small-800-96.0.pth", 96.0, ""),
        "pretrain": ("pretrain/cifar10/vit-small-800-94.6.pth", 94.6, "")}),
    ("cifar10", "vit_base", 2, 32, 800, {
        "finetune": ("finetune/cifar10/vit-base-800-98.3.pth", 98.3, ""),
        "linear": ("linear/cifar10/vit-base-800-96.6.pth", 96.6, ""),
        "pretrain": ("pretrain/cifar10/vit-base-800-95.8.pth", 95.8, "")}),
    ("cifar100", "vit_tiny", 2, 32, 800, {
        "finetune": ("finetune/cifar100/vit-tiny-800-84.6.pth", 84.9, _FILE_NAME_NOTE),
        "linear": ("linear/cifar100/vit-tiny-800-74.7.pth", 74.7, ""),
        "pretrain": ("pretrain/cifar100/vit-tiny-800-68.8.pth", 68.8, _TINY_NOTE)}),
    ("cifar100", "vit_small", 2, 32, 800, {
        "finetune": ("finetune/cifar100/vit-small-800-86.0.pth", 86.0, ""),
        "linear": ("linear/cifar100/vit-small-800-78.7.pth", 78.7, ""),
        "pretrain": ("pretrain/cifar100/vit-small-800-75.4.pth", 75.4, "")}),
    ("cifar100", "vit_base", 2, 32, 800, {
        "finetune": ("finetune/cifar100/vit-base-800-86.0.pth", 86.0, _C100_BASE_NOTE),
        "linear": ("linear/cifar100/vit-base-800-79.7.pth", 79.7, ""),
        "pretrain": ("pretrain/cifar100/vit-base-800-75.7.pth", 75.7, "")}),
]


def _build_registry() -> dict[str, ReleasedWeights]:
    registry: dict[str, ReleasedWeights] = {}
    for dataset, arch, patch, img, epochs, files in _TABLE:
        for protocol in ("pretrain", "linear", "finetune"):
            path, top1, note = files[protocol]
            name = f"{dataset}-{arch.replace('_', '-')}-{protocol}"
            registry[name] = ReleasedWeights(name, dataset, arch, patch, img, epochs, protocol, top1, path, note)
    return registry


RELEASED: dict[str, ReleasedWeights] = _build_registry()

# Documented oddities of the release (README vs files), printed under `list`.
QUIRKS = (
    "Pretraining files are evaluated with kNN (the number shown); the same file is the starting point of the "
    "linear and fine-tuning protocols.",
    "cifar100-vit-tiny-finetune: " + _FILE_NAME_NOTE + ".",
    "cifar100-vit-base-finetune: " + _C100_BASE_NOTE + ".",
    "Folder spelling: finetune/imagenet-1k/ but linear/imagenet1k/ and pretrain/imagenet1k/ (as released).",
    "ViT-S uses 12 attention heads in every released file (the paper's Table 8 says 6): build ViT-S with "
    "num_heads=12.",
    "The official linear / fine-tune best.pth files are whole pickled modules: they are read with a restricted "
    "unpickler (no code runs); --allow-pickle is needed only if that fails.",
)


def get_released(name: str) -> ReleasedWeights:
    """The registry entry called ``name`` (error with the closest names otherwise)."""
    if name in RELEASED:
        return RELEASED[name]
    close = difflib.get_close_matches(name, list(RELEASED), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise WeightsError(f"no released weights called {name!r}.{hint} See `python -m patchmix.weights list`.")


def format_registry() -> str:
    """The registry as a text table (one row per released file) followed by the documented quirks."""
    header = ("name", "dataset", "model", "epochs", "protocol", "top-1", f"file in huggingface.co/{REPO_ID}")
    short = {"vit_tiny": "ViT-T", "vit_small": "ViT-S", "vit_base": "ViT-B"}
    rows = [(e.name, e.dataset, f"{short[e.arch]}/{e.patch_size}", str(e.epochs), e.metric,
             f"{e.top1:.1f}" + ("*" if e.note and e.protocol != "pretrain" else ""), e.path)
            for e in RELEASED.values()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "* see notes. Notes:"] + [f"  - {q}" for q in QUIRKS]
    lines += ["", "Use a name wherever weights are asked for, e.g. "
              "`python main_knn.py --config cifar10_vit_tiny --pretrained-weights cifar10-vit-tiny-pretrain`."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Finding the file: local path, URL or registry name


def default_weights_dir() -> Path:
    """Where hand-downloaded released files are looked for: ``$PATCHMIX_WEIGHTS_DIR``, else ``./weights``."""
    return Path(os.environ.get("PATCHMIX_WEIGHTS_DIR") or "weights")


def _offline_help(what: str, url: str, reason: str, place: Path, alternative: Path | None = None) -> str:
    where = f"{place.absolute()}" + (f" (or {alternative.absolute()})" if alternative else "")
    return (f"cannot download {what} from {url} ({reason}). Without internet: download that URL on a machine "
            f"that has it and put the file at {where} -- it is looked for there before any download -- or pass "
            f"its path to --pretrained-weights.")


def _hub_download(repo_id: str, filename: str, revision: str, cache_dir: str | os.PathLike | None,
                  what: str, place: Path, alternative: Path | None = None) -> Path:
    url = _HUB_URL.format(repo=repo_id, revision=revision, path=filename)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # huggingface_hub is optional for plain URLs; fall back to torch.hub
        return _url_download(url, what, None)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except Exception as error:  # connection errors, offline mode, 404s come in many types
        kind = type(error).__name__
        if "EntryNotFound" in kind and "Local" not in kind:
            raise WeightsError(f"{filename} is not in the Hugging Face repo {repo_id} (revision {revision}); "
                               f"{what} may have moved. Check https://huggingface.co/{repo_id}/tree/{revision} "
                               f"and pass the file's path or URL to --pretrained-weights.") from error
        if "LocalEntryNotFound" in kind or "OfflineMode" in kind:
            from huggingface_hub import constants
            reason = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
                      "the hub cannot be reached") + " and the Hugging Face cache has no copy"
        else:
            reason = f"{kind}: {str(error).splitlines()[0] if str(error) else ''}"
        raise WeightsError(_offline_help(what, url, reason, place, alternative)) from error


def _url_download(url: str, what: str, model_dir: str | os.PathLike | None, progress: bool = True) -> Path:
    """Download ``url`` once into torch.hub's cache (atomic; SHA-256 checked when the name ends in -<hash>)."""
    directory = Path(model_dir) if model_dir else Path(torch.hub.get_dir()) / "checkpoints"
    filename = os.path.basename(urlparse(url).path) or "weights.pth"
    target = directory / filename
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(filename)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None,
                                       progress=progress)
    except Exception as error:
        raise WeightsError(_offline_help(what, url, f"{type(error).__name__}: {error}", target)) from error
    return target


_HF_URL = re.compile(r"^https?://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")


def resolve_weights(source: str, weights_dir: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[Path, ReleasedWeights | None]:
    """The local file behind ``source`` (path, URL or registry name), downloading it if needed.

    Registry names are first looked for in ``weights_dir`` (default :func:`default_weights_dir`), under their
    hub path or just their file name, so a copy downloaded by hand is used offline.
    """
    if not source:
        raise WeightsError("no weights given: pass --pretrained-weights with a checkpoint path, a URL or a "
                           "released name (python -m patchmix.weights list).")
    if source in RELEASED:
        entry = RELEASED[source]
        base = Path(weights_dir) if weights_dir else default_weights_dir()
        candidates = (base / entry.path, base / Path(entry.path).name)
        for candidate in candidates:
            if candidate.is_file():
                return candidate, entry
        return _hub_download(entry.repo_id, entry.path, entry.revision, cache_dir,
                             f"the released weights {entry.name!r} (file {entry.path})", *candidates), entry
    if source.startswith(("http://", "https://", "file://")):
        match = _HF_URL.match(source)
        released = next((e for e in RELEASED.values() if match and e.repo_id == match["repo"]
                         and e.path == match["path"]), None)
        if match:
            place = (Path(weights_dir) if weights_dir else default_weights_dir()) / match["path"]
            if place.is_file():
                return place, released
            return _hub_download(match["repo"], match["path"], match["rev"], cache_dir, f"{match['path']}",
                                 place), released
        return _url_download(source, source, cache_dir), None
    path = Path(source).expanduser()
    if path.is_file():
        return path, None
    close = difflib.get_close_matches(source, list(RELEASED), n=2, cutoff=0.6)
    hint = f" Did you mean the released weights {', '.join(close)}?" if close else ""
    raise WeightsError(f"weights {source!r} not found: no such file, and not a URL or released name.{hint} "
                       f"Released names: `python -m patchmix.weights list`.")


# --------------------------------------------------------------------------------------------------------------
# Reading a file safely


class _Placeholder:
    """Stands in for any class the restricted reader refuses to build; it only records what it is given."""

    _origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Placeholder":
        obj = object.__new__(cls)
        object.__setattr__(obj, "_args", args)
        object.__setattr__(obj, "_state", None)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_state", state)

    def __repr__(self) -> str:
        return f"<not built: {self._origin}>"


def _allowed_global(module: str, name: str) -> Any:
    """The few globals a tensor needs (all already imported: nothing is imported here), else None."""
    allowed = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
               ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
               ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
               ("torch", "Size"), ("torch", "device")}
    if (module, name) in allowed:
        return getattr(sys.modules[module], name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


def _restricted_pickle_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only tensor-rebuilding globals.

    torch's own unpickler subclass keeps handling storages (``persistent_load``) and storage types; every
    other global becomes a fresh :class:`_Placeholder` subclass named after it.
    """
    refused: set[str] = set()

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found = _allowed_global(module, name)
            if found is not None:
                return found
            refused.add(f"{module}.{name}")
            return type(name, (_Placeholder,), {"_origin": f"{module}.{name}"})

    module = types.ModuleType("patchmix_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    module.refused = refused  # type: ignore[attr-defined]
    return module


def _module_state(obj: Any) -> dict | None:
    """The recorded ``__dict__`` of a placeholder that was an ``nn.Module`` (has _parameters/_modules)."""
    if not isinstance(obj, _Placeholder):
        return None
    state = obj._state
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]
    if isinstance(state, dict) and ("_parameters" in state or "_modules" in state):
        return state
    return None


def _module_tensors(state: dict, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Rebuild ``state_dict()`` of a pickled module from its recorded attributes, without building it."""
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()
    transient = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, torch.Tensor) and name not in transient:
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        child_state = _module_state(child)
        if child_state is not None:
            _module_tensors(child_state, f"{prefix}{name}.", out)


def _to_plain(obj: Any) -> Any:
    """Replace pickled modules (placeholders or, with --allow-pickle, real ones) by their state dicts."""
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach() if isinstance(obj, nn.Parameter) else obj
    if isinstance(obj, _Placeholder):
        state = _module_state(obj)
        if state is None:
            return repr(obj)
        tensors: dict[str, torch.Tensor] = {}
        _module_tensors(state, "", tensors)
        return tensors
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj) if not hasattr(obj, "_fields") else obj
    return obj


def _unpickler_reason(error: Exception) -> str:
    """The useful part of torch's weights-only refusal ("Unsupported global: GLOBAL module.vits.X ...")."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(error), re.S)
    reason = (match.group(1) if match else str(error).splitlines()[0]).strip()
    return reason.split(" was not an allowed global")[0][:200]


def read_weights_file(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[Any, list[str]]:
    """Read a weights file without running code from it; return ``(content, notes)``.

    ``.safetensors`` files are read with safetensors; everything else with ``torch.load(weights_only=True)``,
    falling back for pickled objects to the restricted reader (or, with ``allow_pickle``, to a trusted
    ``torch.load(weights_only=False)``). Pickled modules come back as their state dicts.
    """
    path = Path(path)
    notes: list[str] = []
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            content: Any = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
        if "patchmix_backbone" in metadata:
            content = {"model": content, "backbone": json.loads(metadata["patchmix_backbone"])}
        return content, notes
    try:
        return torch.load(path, map_location="cpu", weights_only=True), notes
    except pickle.UnpicklingError as error:  # weights-only refusals, but also garbage bytes
        reason = _unpickler_reason(error)
        if "global" not in reason.lower():
            raise WeightsError(f"cannot read {path} ({reason}). It is truncated, corrupt or not a PyTorch file; "
                               f"download it again.") from error
    except Exception as error:
        raise WeightsError(f"cannot read {path} ({type(error).__name__}: {str(error).splitlines()[0]}). It is "
                           f"truncated, corrupt or not a PyTorch file; download it again.") from error
    if allow_pickle:
        notes.append("read with torch.load(weights_only=False) because --allow-pickle was given (the file's "
                     "pickled code ran)")
        try:
            return _to_plain(torch.load(path, map_location="cpu", weights_only=False)), notes
        except Exception as error:
            raise WeightsError(f"cannot unpickle {path} even with --allow-pickle ({type(error).__name__}: "
                               f"{error}). The classes it pickles must be importable.") from error
    module = _restricted_pickle_module()
    try:
        content = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except Exception as error:
        raise WeightsError(f"{path} pickles Python objects ({reason}) "
                           f"and the restricted reader could not extract its tensors ({type(error).__name__}: "
                           f"{error}). If you trust the file, pass --allow-pickle to load it with "
                           f"torch.load(weights_only=False), which runs code stored in it.") from error
    refused = sorted(module.refused)
    shown = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
    notes.append(f"the file pickles Python objects ({shown}); they were not built and no code ran: tensors "
                 f"were read with a restricted unpickler")
    return _to_plain(content), notes


# --------------------------------------------------------------------------------------------------------------
# From file content to a timm backbone state dict


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


_CONTAINER_KEYS = ("model", "state_dict", "module", "model_ema", "state_dict_ema", "teacher")


def _find_state_dict(content: Any, key: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if key:
        if not isinstance(content, dict) or key not in content:
            keys = ", ".join(map(str, content)) if isinstance(content, dict) else type(content).__name__
            raise WeightsError(f"{path} has no entry {key!r} (--checkpoint-key); it holds: {keys}.")
        if not _is_state_dict(content[key]):
            raise WeightsError(f"entry {key!r} of {path} is not a dict of tensors.")
        return content[key], key
    if _is_state_dict(content):
        return content, ""
    if isinstance(content, dict):
        for candidate in _CONTAINER_KEYS:
            if _is_state_dict(content.get(candidate)):
                return content[candidate], candidate
        keys = ", ".join(map(str, content))
        raise WeightsError(f"no state dict found in {path}: it holds {keys}. Name the entry with "
                           f"--checkpoint-key.")
    raise WeightsError(f"{path} holds a {type(content).__name__}, not a checkpoint dict.")


def _strip_wrappers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def infer_backbone(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Sizes of a timm ViT read off its tensors: width, depth, patch size, image size (square), MLP ratio.

    ``arch`` is the named size with that width and depth, or None. The number of attention heads cannot be
    read off the shapes (qkv is one D x 3D matrix whatever the split), so it is not returned.
    """
    try:
        proj = state_dict["patch_embed.proj.weight"]
        pos = state_dict["pos_embed"]
    except KeyError as error:
        raise WeightsError(f"not a ViT state dict: {error} is missing.") from error
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    tokens = int(pos.shape[1]) - (1 if "cls_token" in state_dict else 0)
    grid = math.isqrt(tokens)
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    arch = next((name for name, spec in ARCHS.items() if (spec.embed_dim, spec.depth) == (embed_dim, depth)), None)
    return {"arch": arch, "embed_dim": embed_dim, "depth": depth, "patch_size": patch,
            "img_size": grid * patch if grid * grid == tokens else None,
            "mlp_ratio": float(fc1.shape[0]) / embed_dim if fc1 is not None else None}


def _describe_backbone(kwargs: dict[str, Any], heads: str | None = None) -> str:
    arch = kwargs.get("arch")
    named = arch in ARCHS and (ARCHS[arch].embed_dim, ARCHS[arch].depth) == (kwargs["embed_dim"], kwargs["depth"])
    name = arch if named else "a custom ViT"
    img = f" at {kwargs['img_size']} px" if kwargs.get("img_size") else ""
    heads = heads if heads is not None else f"{kwargs['num_heads']} heads"
    return f"{name}/{kwargs['patch_size']}{img} ({kwargs['embed_dim']}-d, {kwargs['depth']} blocks, {heads})"


@dataclass
class LoadedWeights:
    """What :func:`load_weights` found: a timm backbone state dict and how to build the model for it."""

    state_dict: dict[str, torch.Tensor]     # timm VisionTransformer keys, no head, no prefix
    backbone: dict[str, Any]                # build_backbone(**backbone): arch, img_size, patch_size, sizes
    head: dict[str, torch.Tensor]           # classifier tensors of linear / fine-tune files ("head.weight", ...)
    path: Path
    source: str
    kind: str                               # the file format, in words
    encoder: str = ""                       # which encoder of a pretraining file ("" for a plain ViT)
    released: ReleasedWeights | None = None
    heads_guessed: bool = False             # num_heads is the architecture's official value, not from the file
    notes: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)  # the file's non-tensor entries (epoch, config ...)

    @property
    def num_classes(self) -> int:
        weight = self.head.get("head.weight", self.head.get("head.1.weight"))
        return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 0

    def describe(self) -> str:
        lines = [f"weights: {self.source}" + (f" ({self.path})" if str(self.path) != self.source else ""),
                 f"  format: {self.kind}" + (f"; encoder: {self.encoder}" if self.encoder else ""),
                 f"  backbone: {_describe_backbone(self.backbone)}"
                 + ("; heads not stored in the file" if self.heads_guessed else "")]
        if self.num_classes:
            lines.append(f"  classifier head: {self.num_classes} classes")
        if self.released is not None:
            lines.append(f"  released: {self.released.name}, paper {self.released.metric} top-1 "
                         f"{self.released.top1:.1f}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """A JSON-able record for results.json / checkpoints."""
        return {"source": self.source, "path": str(self.path), "format": self.kind, "encoder": self.encoder,
                "backbone": dict(self.backbone), "num_classes": self.num_classes,
                "released": self.released.name if self.released else None, "heads_guessed": self.heads_guessed,
                "notes": list(self.notes)}


def _split_layout(sd: dict[str, torch.Tensor], encoder: str, path: Path, ours: bool,
                  notes: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str, str]:
    """(backbone, head, encoder used, format) of a state dict of any supported layout."""
    prefixes = sorted({k[: -len("cls_token")] for k in sd if k.endswith("cls_token")})
    encoders = [p[:-1] for p in prefixes if p in ("base_encoder.", "momentum_encoder.")]
    if encoders:
        chosen = encoder or "momentum_encoder"
        if chosen not in encoders:
            if chosen == "momentum_encoder" and "base_encoder" in encoders:
                notes.append("the checkpoint has no momentum encoder (trained with use_momentum=False, like the "
                             "official ViT-T recipe): using base_encoder")
                chosen = "base_encoder"
            else:
                raise WeightsError(f"{path} has no {chosen} (it has {', '.join(encoders)}); set --encoder.")
        prefix = chosen + "."
        fmt = "PatchMix pretraining checkpoint (this code)" if ours else "official PatchMix pretraining checkpoint"
        backbone = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if any(k.startswith("head.") for k in backbone):
            notes.append(f"dropped {chosen}.head.* (the projector: not part of the backbone)")
        return ({k: v for k, v in backbone.items() if not k.startswith("head.")}, {}, chosen, fmt)
    if not prefixes:
        sample = ", ".join(list(sd)[:4])
        raise WeightsError(f"no ViT found in {path}: expected base_encoder.* / momentum_encoder.* (PatchMix "
                           f"pretraining) or cls_token, blocks.N.* (a ViT), found keys like {sample}.")
    if len(prefixes) > 1:
        named = [p[:-1] for p in prefixes if p]
        if encoder and encoder + "." in prefixes:
            prefixes = [encoder + "."]
        else:
            raise WeightsError(f"{path} holds several ViTs (prefixes {', '.join(named or prefixes)}); choose one "
                               f"with --encoder.")
    prefix = prefixes[0]
    vit = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    head = {k: v for k, v in vit.items() if k.startswith("head.")}
    backbone = {k: v for k, v in vit.items() if not k.startswith("head.")}
    if ours:
        fmt = "ViT classifier checkpoint (this code)" if head else "ViT backbone (this code)"
    else:
        fmt = "ViT with classifier head (official linear / fine-tune file, or timm)" if head else "ViT backbone"
    return backbone, head, prefix[:-1], fmt


def _summarise_keys(keys: list[str]) -> str:
    """``blocks.6-11.* (72 tensors), norm.weight``: whole blocks are collapsed into ranges."""
    blocks: dict[int, int] = {}
    others = []
    for key in keys:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
            blocks[int(parts[1])] = blocks.get(int(parts[1]), 0) + 1
        else:
            others.append(key)
    items = []
    if blocks:
        first, last = min(blocks), max(blocks)
        span = f"blocks.{first}.*" if first == last else f"blocks.{first}-{last}.*"
        if len(blocks) != last - first + 1:
            span = "blocks." + ",".join(map(str, sorted(blocks))) + ".*"
        items.append(f"{span} ({sum(blocks.values())} tensors)")
    items += others[:6] + ([f"and {len(others) - 6} more"] if len(others) > 6 else [])
    return ", ".join(items)


def _meta_shapes(kwargs: dict[str, Any]) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = build_backbone(**kwargs)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_fit(backbone: dict[str, torch.Tensor], kwargs: dict[str, Any], path: Path,
               inferred: dict[str, Any], requested: str) -> None:
    """Raise :class:`WeightsMismatchError` listing every tensor that does not fit the ViT of ``kwargs``."""
    expected = _meta_shapes(kwargs)
    wrong = [f"{k}: file {list(v.shape)} vs model {list(expected[k])}" for k, v in backbone.items()
             if k in expected and tuple(v.shape) != tuple(expected[k])]
    missing = [k for k in expected if k not in backbone]
    unexpected = [k for k in backbone if k not in expected]
    if not (wrong or missing or unexpected):
        return
    lines = wrong[:8] + ([f"... {len(wrong) - 8} more shape mismatches"] if len(wrong) > 8 else [])
    for label, keys in (("missing in the file", missing), ("not in the model", unexpected)):
        if keys:
            lines.append(f"{label}: {_summarise_keys(keys)}")
    held = dict(inferred)
    arch = held.get("arch")
    heads_note = ("attention heads cannot be inferred from tensor shapes" +
                  (f"; the official value for {arch} is {ARCHS[arch].num_heads}" if arch else "") +
                  ("; ViT-S uses 12 in the released code and weights, the paper's table says 6"
                   if arch == "vit_small" else ""))
    size = f" at {held['img_size']} px" if held.get("img_size") else ""
    name = arch or "a custom ViT"
    flags = (f"--arch {arch} " if arch else "") + f"--patch-size {held['patch_size']}"
    raise WeightsMismatchError(
        f"the weights in {path} do not fit the requested ViT {requested}:\n  " + "\n  ".join(lines) +
        f"\nThe file seems to hold {name}/{held['patch_size']}{size} ({held['embed_dim']}-d, {held['depth']} "
        f"blocks, mlp ratio {held['mlp_ratio']:g}; {heads_note}). Leave --arch/--patch-size unset to use the "
        f"file's own architecture, or pass {flags} (and --num-heads if it was trained with another head count).")


def load_weights(source: str, encoder: str = "momentum_encoder", checkpoint_key: str = "",
                 allow_pickle: bool = False, arch: str = "", patch_size: int = 0, num_heads: int = 0,
                 weights_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 resolved: tuple[Path, ReleasedWeights | None] | None = None) -> LoadedWeights:
    """Load any supported weights as a plain timm backbone state dict plus the ViT to build for it.

    Args:
        source: a path, a URL or a released name (see :func:`resolve_weights`).
        encoder: for pretraining files, ``momentum_encoder`` (the official choice; falls back to
            ``base_encoder`` with a note when the file has none) or ``base_encoder``; for files with several
            ViTs, the prefix to use.
        checkpoint_key: the entry holding the state dict (default: the file itself, ``model``, ``state_dict``...).
        allow_pickle: trust the file and let its pickled objects be built (runs code from the file).
        arch / patch_size / num_heads: override what the file says or implies (empty / 0: keep). A file that
            does not fit the resulting ViT raises :class:`WeightsMismatchError` naming what it holds.
        resolved: the result of :func:`resolve_weights` for ``source``, if already known (skips the lookup).

    The architecture comes, in this order, from the arguments, the checkpoint's ``backbone`` entry (ours),
    the registry (released files) and the tensor shapes; attention heads, which shapes cannot reveal, default
    to the official value of the architecture (ViT-T 3, ViT-S 12, ViT-B 12) and ``heads_guessed`` is set.
    """
    path, released = resolved or resolve_weights(source, weights_dir, cache_dir)
    content, notes = read_weights_file(path, allow_pickle)
    sd, used_key = _find_state_dict(content, checkpoint_key, path)
    ours = isinstance(content, dict) and ("format_version" in content or "backbone" in content)
    extra: dict[str, Any] = {}
    if isinstance(content, dict) and used_key:
        extra = {k: v for k, v in content.items() if isinstance(v, (int, float, str, bool))}
        if isinstance(content.get("config"), dict):
            extra["config"] = content["config"]
    backbone_sd, head, used_encoder, kind = _split_layout(_strip_wrappers(sd), encoder, path, ours, notes)
    if any(k.startswith("module.") for k in sd):
        notes.append("removed the DDP prefix module.")
    inferred = infer_backbone(backbone_sd)

    stored = content.get("backbone") if isinstance(content, dict) else None
    kwargs: dict[str, Any] = {"arch": inferred["arch"] or "vit_tiny", "img_size": inferred["img_size"],
                              "patch_size": inferred["patch_size"], "embed_dim": inferred["embed_dim"],
                              "depth": inferred["depth"], "num_heads": 0}
    heads_guessed = False
    if isinstance(stored, dict) and {"embed_dim", "depth", "num_heads"} <= set(stored):
        kwargs.update({k: stored[k] for k in kwargs if k in stored})
    elif released is not None and released.backbone_kwargs()["embed_dim"] == inferred["embed_dim"]:
        kwargs["num_heads"] = released.num_heads
    if arch:
        if arch not in ARCHS:
            raise WeightsError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}.")
        kwargs.update(arch=arch, embed_dim=ARCHS[arch].embed_dim, depth=ARCHS[arch].depth,
                      num_heads=num_heads or ARCHS[arch].num_heads)
    if patch_size:
        if kwargs["img_size"]:
            kwargs["img_size"] = kwargs["img_size"] // kwargs["patch_size"] * patch_size
        kwargs["patch_size"] = patch_size
    if num_heads:
        kwargs["num_heads"] = num_heads
    if not kwargs["num_heads"]:
        named = kwargs["arch"] in ARCHS and ARCHS[kwargs["arch"]].embed_dim == kwargs["embed_dim"]
        if not named:
            raise WeightsError(f"{path} holds a {kwargs['embed_dim']}-d ViT, which is none of the named sizes, "
                               f"and the number of attention heads cannot be inferred from tensor shapes: pass "
                               f"--num-heads.")
        kwargs["num_heads"] = ARCHS[kwargs["arch"]].num_heads
        heads_guessed = True
        notes.append(f"attention heads cannot be inferred from tensor shapes: using {kwargs['num_heads']}, the "
                     f"official value for {kwargs['arch']} (pass --num-heads if the file was trained otherwise)")
    if not kwargs["img_size"]:
        raise WeightsError(f"cannot tell the image size of {path}: its position table is not a square grid; "
                           f"non-square ViTs are not supported.")
    if kwargs["embed_dim"] % kwargs["num_heads"]:
        raise WeightsError(f"{kwargs['embed_dim']}-d is not divisible into {kwargs['num_heads']} heads; fix "
                           f"--num-heads.")
    _check_fit(backbone_sd, kwargs, path, inferred, _describe_backbone(kwargs))
    return LoadedWeights(backbone_sd, kwargs, head, path, source, kind, used_encoder, released, heads_guessed,
                         notes, extra)


def build_head(head: dict[str, torch.Tensor]) -> nn.Module:
    """The classifier stored in ``head`` (``head.weight`` = Linear; ``head.0.running_mean`` + ``head.1.weight``
    = BatchNorm1d without affine, then Linear), with those tensors loaded."""
    if "head.weight" in head:
        weight = head["head.weight"]
        module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias="head.bias" in head)
    elif "head.1.weight" in head and "head.0.running_mean" in head:
        weight = head["head.1.weight"]
        module = nn.Sequential(nn.BatchNorm1d(weight.shape[1], affine="head.0.weight" in head, eps=1e-6),
                               nn.Linear(weight.shape[1], weight.shape[0], bias="head.1.bias" in head))
    else:
        raise WeightsError(f"unsupported classifier head ({', '.join(head) or 'none'}); expected head.weight.")
    module.load_state_dict({k[len("head."):]: v for k, v in head.items()})
    return module


def build_model(loaded: LoadedWeights, drop_path_rate: float = 0.0, with_head: bool = False) -> nn.Module:
    """The timm ViT of ``loaded`` with its weights (strict), optionally with the file's classifier head."""
    model = build_backbone(drop_path_rate=drop_path_rate, **loaded.backbone)
    model.load_state_dict(loaded.state_dict, strict=True)
    if with_head:
        if not loaded.head:
            raise WeightsError(f"{loaded.source} has no classifier head (it is a backbone / pretraining file); "
                               f"train one with main_linear.py or main_finetune.py.")
        model.head = build_head(loaded.head)
        model.num_classes = loaded.num_classes
    return model


def hub_model(dataset: str, arch: str, pretrained: bool = True, weights: str = "pretrain",
              drop_path_rate: float = 0.0, weights_dir: str | os.PathLike | None = None) -> nn.Module:
    """A released PatchMix ViT (the ``hubconf.py`` entries).

    ``weights="pretrain"`` gives the backbone (CLS-token features, ``num_classes=0``) of the pretraining file
    (momentum encoder, or the online encoder for ViT-T); ``"linear"`` / ``"finetune"`` give the released
    classifier (backbone + head). ``pretrained=False`` builds the same architecture with random weights.
    """
    if weights not in ("pretrain", "linear", "finetune"):
        raise ValueError(f"weights must be pretrain, linear or finetune, got {weights!r}.")
    entry = get_released(f"{dataset}-{arch.replace('_', '-')}-{weights}")
    if not pretrained:
        model = build_backbone(drop_path_rate=drop_path_rate, **entry.backbone_kwargs())
        if weights != "pretrain":
            model.reset_classifier({"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset])
        return model
    loaded = load_weights(entry.name, weights_dir=weights_dir)
    return build_model(loaded, drop_path_rate=drop_path_rate, with_head=weights != "pretrain")


# --------------------------------------------------------------------------------------------------------------
# Export


_TIMM_DEFAULT_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12}


def timm_model_name(backbone: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A timm model name and the keyword arguments that make it this backbone (as few as needed).

    timm's ViT-S has 6 heads, PatchMix's 12: for vit_small, ``num_heads=12`` is always among the arguments.
    """
    arch = backbone["arch"] if backbone["arch"] in ARCHS else "vit_tiny"
    name = f"{arch}_patch16_224"
    spec = ARCHS[arch]
    kwargs: dict[str, Any] = {}
    if backbone["embed_dim"] != spec.embed_dim:
        kwargs["embed_dim"] = backbone["embed_dim"]
    if backbone["depth"] != spec.depth:
        kwargs["depth"] = backbone["depth"]
    if backbone["num_heads"] != _TIMM_DEFAULT_HEADS[arch]:
        kwargs["num_heads"] = backbone["num_heads"]
    if backbone["patch_size"] != 16:
        kwargs["patch_size"] = backbone["patch_size"]
    if backbone["img_size"] != 224:
        kwargs["img_size"] = backbone["img_size"]
    return name, kwargs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_backbone(loaded: LoadedWeights, out_dir: str | os.PathLike, name: str = "") -> dict[str, Any]:
    """Write ``loaded``'s backbone as a plain timm state dict: ``NAME-<sha256[:8]>.pth`` (the hash suffix lets
    ``torch.hub`` check downloads), ``NAME.safetensors`` (architecture in its metadata) and ``NAME.json``.

    Returns the JSON record, which also holds the ``timm.create_model`` call that loads the files.
    """
    from safetensors.torch import save_file

    from patchmix.checkpoint import save_checkpoint
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = loaded.backbone
    name = name or f"patchmix_{b['arch'] if b['arch'] in ARCHS else 'vit'}_p{b['patch_size']}_{b['img_size']}"
    tensors = {k: v.detach().contiguous().clone() for k, v in loaded.state_dict.items()}
    tmp = save_checkpoint(tensors, out / f".{name}.pth.partial")
    digest = _sha256(tmp)
    pth = out / f"{name}-{digest[:8]}.pth"
    os.replace(tmp, pth)
    st = out / f"{name}.safetensors"
    st_tmp = out / f".{name}.safetensors.partial"
    save_file(tensors, str(st_tmp), metadata={"patchmix_backbone": json.dumps(b), "format": "pt"})
    os.chmod(st_tmp, pth.stat().st_mode & 0o777)  # same permissions as the .pth (safetensors writes 0600)
    os.replace(st_tmp, st)
    timm_name, timm_kwargs = timm_model_name(b)
    call_kwargs = "".join(f", {k}={v!r}" for k, v in timm_kwargs.items())
    record = {"backbone": b, "source": loaded.source, "format": loaded.kind, "encoder": loaded.encoder,
              "files": {"pth": pth.name, "safetensors": st.name}, "sha256": digest,
              "timm_model": timm_name, "timm_kwargs": timm_kwargs, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
              "feature": "CLS token after the final LayerNorm (num_classes=0)",
              "usage": (f"timm.create_model({timm_name!r}, pretrained=True, num_classes=0{call_kwargs}, "
                        f"pretrained_cfg_overlay=dict(file={str(pth)!r}, mean={IMAGENET_MEAN}, "
                        f"std={IMAGENET_STD}, input_size=(3, {b['img_size']}, {b['img_size']})))")}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------------------------------
# Command line


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint path, URL or released name")
    parser.add_argument("--encoder", default="momentum_encoder",
                        help="encoder of a pretraining file: momentum_encoder (default) or base_encoder")
    parser.add_argument("--checkpoint-key", default="", help="entry holding the state dict")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="trust the file: torch.load(weights_only=False) runs code stored in it")
    parser.add_argument("--arch", default="", help="override the architecture (default: from the file)")
    parser.add_argument("--patch-size", type=int, default=0, help="override the patch size")
    parser.add_argument("--num-heads", type=int, default=0, help="override the number of attention heads")
    parser.add_argument("--weights-dir", default=None, help="folder of hand-downloaded released files")


def _load_from_args(args: argparse.Namespace) -> LoadedWeights:
    return load_weights(args.source, args.encoder, args.checkpoint_key, args.allow_pickle, args.arch,
                        args.patch_size, args.num_heads, args.weights_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patchmix.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the released weights as a table")
    info = commands.add_parser("info", help="describe what the loader finds in a file, URL or released name")
    _add_load_arguments(info)
    download = commands.add_parser("download", help="fetch a released file (or URL) into the local cache")
    download.add_argument("source")
    download.add_argument("--weights-dir", default=None)
    export = commands.add_parser("export", help="write a plain timm backbone (.pth + .safetensors + .json)")
    _add_load_arguments(export)
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--name", default="", help="file name stem (default patchmix_<arch>_p<patch>_<img>)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(format_registry())
        elif args.command == "download":
            path, _ = resolve_weights(args.source, args.weights_dir)
            print(path)
        elif args.command == "info":
            print(_load_from_args(args).describe())
        else:
            loaded = _load_from_args(args)
            print(loaded.describe())
            record = export_backbone(loaded, args.out, args.name)
            out = Path(args.out)
            print(f"wrote {out / record['files']['pth']}, {out / record['files']['safetensors']} and "
                  f"{out / (Path(record['files']['safetensors']).stem + '.json')}")
            print("load it with timm (CLS-token features, ImageNet normalisation):")
            print(f"  import timm\n  model = {record['usage']}")
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
