"""From a weights source (local path, URL or released name) to a local file, downloading it when needed.

Released names are looked for in the weights folder first, so copies downloaded by hand work offline, then
fetched with huggingface_hub into its cache (hub files) or with torch.hub into its cache (direct URLs: DINO);
other URLs are downloaded once into torch.hub's cache, and a URL of a released file is treated as its name. A
failed download says where to put the file by hand. Nothing here reads a file: that is :mod:`patchmix.weights.unpickle`.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch

from patchmix.weights.errors import WeightsError
from patchmix.weights.registry import _HUB_URL, RELEASED, ReleasedWeights


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
    try:  # imported here: huggingface_hub is optional (without it, downloads fall back to torch.hub)
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
            from huggingface_hub import constants  # lazy, as above
            reason = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
                      "the hub cannot be reached") + " and the Hugging Face cache has no copy"
        else:
            reason = f"{kind}: {str(error).splitlines()[0] if str(error) else ''}"
        raise WeightsError(_offline_help(what, url, reason, place, alternative)) from error


def _url_download(url: str, what: str, model_dir: str | os.PathLike | None, progress: bool = True,
                  place: Path | None = None, alternative: Path | None = None) -> Path:
    """Download ``url`` once into torch.hub's cache (atomic; SHA-256 checked when the name ends in -<hash>).

    On failure the message says to put the file at ``place`` (default: the cache file itself)."""
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
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise WeightsError(_offline_help(what, url, reason, place or target, alternative)) from error
    return target


_HF_URL = re.compile(r"^https?://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")


def resolve_weights(source: str, weights_dir: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[Path, ReleasedWeights | None]:
    """The local file behind ``source`` (path, URL or registry name), downloading it if needed.

    Registry names are first looked for in ``weights_dir`` (default :func:`default_weights_dir`), under their
    hub path or just their file name, so a copy downloaded by hand is used offline. Entries with a direct URL
    (DINO) are looked for as ``<method>/<file name>`` or ``<file name>``, then downloaded with torch.hub. Entries
    that cannot be downloaded by name (APS: no hub path published; SelfPatch: only a Google Drive page) are only
    looked for there, as ``<method>/<name>.pth`` or ``<name>.pth``. A URL that is a released file's URL is
    resolved as that name.
    """
    if not source:
        raise WeightsError("no weights given: pass --pretrained-weights with a checkpoint path, a URL or a "
                           "released name (python -m patchmix.weights list).")
    by_url = {e.url: e for e in RELEASED.values() if e.download_url or e.page_url}
    if source in by_url:
        source = by_url[source].name
    if source in RELEASED:
        entry = RELEASED[source]
        base = Path(weights_dir) if weights_dir else default_weights_dir()
        candidates = tuple(base / local for local in entry.local_paths)
        for candidate in candidates:
            if candidate.is_file():
                return candidate, entry
        epochs = f", {entry.epochs} epochs" if entry.epochs else ""
        what = (f"the released weights {entry.name!r} ({entry.label} {entry.protocol} file, "
                f"{entry.arch}/{entry.patch_size} on {entry.dataset}{epochs})")
        if not entry.published:
            raise WeightsError(
                f"{what} are not at {candidates[0].absolute()} (or {candidates[1].absolute()}). "
                f"{entry.by_hand_reason[0].upper()}{entry.by_hand_reason[1:]}, so they cannot be downloaded by "
                f"name: download the file by hand from {entry.url} and put it at {candidates[0].absolute()} "
                f"(--weights-dir or $PATCHMIX_WEIGHTS_DIR), or pass its path to --pretrained-weights.")
        if entry.download_url:
            return _url_download(entry.download_url, what, cache_dir, place=candidates[0],
                                 alternative=candidates[1]), entry
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
