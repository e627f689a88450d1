"""Reading a weights file without running code from it.

``torch.load(weights_only=True)`` runs no code but refuses files that pickle whole Python objects, like the
official linear / fine-tuning ``best.pth`` (a pickled ``nn.Module``). Those go through a restricted unpickler
instead of being trusted: apart from the globals torch needs to rebuild tensors it resolves nothing, so the
file's classes are never imported nor built, and the tensors are taken from the module state each placeholder
recorded. A pickled ``argparse.Namespace`` (the ``args`` entry of DINO's and SelfPatch's training checkpoints)
comes back as a dict of its plain attributes, read from what its placeholder recorded, so ``args.arch`` can be
read without building the object. ``allow_pickle`` is the explicit opt-out, for files the user trusts.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from patchmix.weights.errors import WeightsError


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


_PLAIN = (str, int, float, bool, type(None))


def _plain_value(value: Any) -> Any:
    """A value made only of strings, numbers, booleans, None, lists and tuples, else its ``repr``."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_plain_value(v) for v in value)
    return repr(value)


def _namespace_dict(obj: Any) -> dict | None:
    """The attributes of a pickled ``argparse.Namespace`` (DINO's ``args``) as a plain dict, else None.

    The restricted reader never builds the Namespace: its placeholder recorded the attribute dict the pickle
    carried, and only plain values are kept from it (anything else becomes its ``repr``).
    """
    if isinstance(obj, argparse.Namespace):
        state: Any = vars(obj)
    elif isinstance(obj, _Placeholder) and obj._origin == "argparse.Namespace":
        state = obj._state
    else:
        return None
    if not isinstance(state, dict):
        return None
    return {str(k): _plain_value(v) for k, v in state.items()}


def _to_plain(obj: Any) -> Any:
    """Replace pickled modules (placeholders or, with --allow-pickle, real ones) by their state dicts, and
    pickled ``argparse.Namespace`` objects by dicts of their plain attributes."""
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach() if isinstance(obj, nn.Parameter) else obj
    namespace = _namespace_dict(obj)
    if namespace is not None:
        return namespace
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
        from safetensors import safe_open  # imported here: only .safetensors files need it
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
