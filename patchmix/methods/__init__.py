"""The pretraining methods, by name (``--method`` or a recipe's ``method`` key picks one).

A method is one module of this package implementing :class:`~patchmix.methods.base.PretrainMethod`; add it to
:data:`METHODS` below. Nothing else in the engine or the entry scripts needs to change.
"""

from __future__ import annotations

from patchmix.config import ConfigError, suggest
from patchmix.methods.aps import APS, APSConfig
from patchmix.methods.base import PretrainConfig, PretrainMethod
from patchmix.methods.dino import DINO, DINOConfig
from patchmix.methods.patchmix import PatchMix, PatchMixConfig
from patchmix.methods.selfpatch import SelfPatch, SelfPatchConfig

__all__ = ["METHODS", "get_method", "PretrainConfig", "PretrainMethod", "PatchMix", "PatchMixConfig", "APS",
           "APSConfig", "DINO", "DINOConfig", "SelfPatch", "SelfPatchConfig"]

METHODS: dict[str, type[PretrainMethod]] = {
    PatchMix.name: PatchMix,  # MoCo v3 is PatchMix with num_mix = 1
    APS.name: APS,
    DINO.name: DINO,
    SelfPatch.name: SelfPatch,
}


def get_method(name: str) -> type[PretrainMethod]:
    """The method class called ``name`` (a one-line error with the closest name otherwise)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}.{suggest(name, list(METHODS))}")
    return METHODS[name]
