"""One loader for every PatchMix weight file, the released weights by name, and export to plain timm backbones.

One module per job, imports going one way (each module imports only those above it in this list):

* ``errors``   -- ``WeightsError`` and ``WeightsMismatchError``;
* ``registry`` -- the released files by name, PatchMix's, APS's, DINO's and SelfPatch's (``RELEASED``, ``QUIRKS``,
  ``get_released``, ``format_registry``), each method's ViT options and head counts
  (``registry.METHOD_BACKBONE_OPTIONS``, ``registry.METHOD_HEADS``);
* ``fetch``    -- path / URL / released name to a local file, downloads (Hugging Face hub, direct URLs), offline
  messages (``resolve_weights``);
* ``unpickle`` -- reading a file without running code from it (``read_weights_file``, restricted unpickler);
* ``layout``   -- file content to a timm backbone state dict: checkpoint layouts (official APS files mapped to
  timm's names; DINO's and SelfPatch's student / teacher wrappers, teacher by default; SelfPatch models keep
  their SelfPatch head ``ca_head.*``), prefixes, encoder choice, size inference, fit check (``load_weights``,
  ``LoadedWeights``, ``infer_backbone``);
* ``build``    -- models from loaded weights and the torch.hub entries (``build_model``, ``build_head``,
  ``hub_model``);
* ``export``   -- plain timm backbone files (``export_backbone``, ``timm_model_name``, ``timm_usage``; SelfPatch
  models as timm's CaiT, ``timm_objects``);
* ``cli``      -- ``python -m patchmix.weights list|info|download|export`` (``main``; ``--help`` tells what
  sources are accepted and how files are read safely).

Import the public names from here: ``from patchmix.weights import load_weights, build_model``.
"""

from patchmix.weights.build import build_head, build_model, hub_model
from patchmix.weights.cli import main
from patchmix.weights.errors import WeightsError, WeightsMismatchError
from patchmix.weights.export import export_backbone, timm_model_name, timm_objects, timm_usage
from patchmix.weights.fetch import default_weights_dir, resolve_weights
from patchmix.weights.layout import LoadedWeights, infer_backbone, load_weights
from patchmix.weights.registry import QUIRKS, RELEASED, REPO_ID, ReleasedWeights, format_registry, get_released
from patchmix.weights.unpickle import read_weights_file

__all__ = ["REPO_ID", "ReleasedWeights", "RELEASED", "QUIRKS", "get_released", "format_registry", "WeightsError",
           "WeightsMismatchError", "LoadedWeights", "resolve_weights", "read_weights_file", "load_weights",
           "infer_backbone", "build_model", "build_head", "timm_model_name", "timm_objects", "timm_usage",
           "export_backbone",
           "default_weights_dir", "hub_model", "main"]
