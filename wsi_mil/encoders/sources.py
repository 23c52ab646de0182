"""Where an entry's weights are on this machine: a publisher folder or the local Hugging Face cache.

Nothing here touches the network, whatever ``HF_HUB_OFFLINE`` says: the cache is read as the
files it is. Layout (``huggingface_hub``)::

    $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
      models--ORG--NAME/
        refs/main                  the commit hash the snapshot 'main' points to
        snapshots/<commit>/        config.json, pytorch_model.bin or model.safetensors (links into blobs/)

A *publisher folder* is what ``huggingface-cli download ORG/NAME --local-dir DIR`` writes: the
weights file (``model.safetensors`` or ``pytorch_model.bin``; some repositories name it
otherwise, see the entry's ``weights_files``) beside ``config.json``.

When nothing is found, :func:`missing_weights_error` says where it looked, the exact command to
run on a machine with internet and how to carry the folder to the offline node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_mil.encoders.entry import EncoderEntry
from wsi_mil.errors import EncoderError


@dataclass(frozen=True)
class PublisherWeights:
    """A publisher's weights found on disk: the ``file``, its ``folder`` and ``config`` (the
    folder's ``config.json``, or None), and ``origin`` (how it was found, for the records)."""

    file: Path
    folder: Path
    config: dict[str, Any] | None
    origin: str


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def cache_folder_name(repo: str, repo_type: str = "model") -> str:
    """``models--ORG--NAME`` for ``ORG/NAME`` (``datasets--ORG--NAME`` for a dataset repository)."""
    return f"{repo_type}s--" + repo.replace("/", "--")


def repo_cache_folder(repo: str, cache: Path | None = None, repo_type: str = "model") -> Path:
    """The folder of ``repo`` in the cache (default: :func:`hf_cache_dir`)."""
    return (cache or hf_cache_dir()) / cache_folder_name(repo, repo_type)


def cached_snapshot(repo: str, cache: Path | None = None, revision: str = "main", repo_type: str = "model") -> Path | None:
    """The snapshot folder of ``repo`` at ``revision`` in the local cache, else None.

    ``refs/<revision>`` names the commit; without that file, a single snapshot is taken (a cache
    copied by hand); several snapshots and no ref are ambiguous (:class:`EncoderError`).
    """
    root = repo_cache_folder(repo, cache, repo_type)
    snapshots = root / "snapshots"
    ref = root / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        folder = snapshots / commit
        if folder.is_dir():
            return folder
        raise EncoderError(f"{ref}: names snapshot {commit}, but {folder} is missing; copy the whole "
                           f"{root.name} folder again")
    if snapshots.is_dir():
        found = sorted(p for p in snapshots.iterdir() if p.is_dir())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise EncoderError(f"{snapshots}: {len(found)} snapshots and no refs/{revision} to choose one; "
                               f"pass the one you mean as --weights {found[-1]}")
    return None


def weights_file_in(folder: Path, entry: EncoderEntry) -> Path | None:
    """The first of ``entry.weights_files`` present in ``folder`` (links followed), else None."""
    for name in entry.weights_files:
        path = folder / name
        if path.is_file():
            return path
    return None


def read_config_json(folder: Path) -> dict[str, Any] | None:
    """``folder/config.json`` as a dict, None when absent; :class:`EncoderError` when unreadable."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderError(f"{path}: not valid JSON ({exc}); download the folder again") from exc
    if not isinstance(data, dict):
        raise EncoderError(f"{path}: expected a JSON object")
    return data


def publisher_folder(folder: str | Path, entry: EncoderEntry, origin: str | None = None) -> PublisherWeights:
    """The weights in a publisher folder, or :class:`EncoderError` naming what the folder holds."""
    folder = Path(folder)
    file = weights_file_in(folder, entry)
    if file is None:
        held = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        fix = (download_advice(entry) if entry.is_publisher_entry else
               "give the weights file inside it, or an encoder folder from 'wsi-mil pretrain'")
        raise EncoderError(
            f"{folder}: no weights file for encoder '{entry.name}' (looked for {', '.join(entry.weights_files)}; "
            f"the folder holds {', '.join(held) or 'nothing'}); {fix}"
        )
    return PublisherWeights(file, folder, read_config_json(folder), origin or f"folder {folder.resolve()}")


def find_in_hf_cache(entry: EncoderEntry) -> PublisherWeights:
    """``entry``'s repository in the local Hugging Face cache, else :func:`missing_weights_error`."""
    if entry.hf_repo is None:
        raise EncoderError(f"encoder '{entry.name}': has no Hugging Face repository; --weights hub is for "
                           "the publishers' entries (see 'wsi-mil encoders')")
    cache = hf_cache_dir()
    snapshot = cached_snapshot(entry.hf_repo, cache, repo_type=entry.hf_repo_type)
    if snapshot is None or weights_file_in(snapshot, entry) is None:
        looked = snapshot if snapshot is not None else repo_cache_folder(entry.hf_repo, cache, entry.hf_repo_type)
        raise missing_weights_error(entry, [looked])
    return publisher_folder(snapshot, entry, origin=f"hf cache {entry.hf_repo}@{snapshot.name}")


def weights_found(entry: EncoderEntry) -> Path | None:
    """The weights file of ``entry`` in the local Hugging Face cache, else None (never raises)."""
    if entry.hf_repo is None:
        return None
    try:
        snapshot = cached_snapshot(entry.hf_repo, repo_type=entry.hf_repo_type)
    except EncoderError:
        return None
    return weights_file_in(snapshot, entry) if snapshot is not None else None


def download_advice(entry: EncoderEntry) -> str:
    """How to fetch ``entry``'s weights on a machine with internet and carry them here (one line)."""
    repo = entry.hf_repo or "ORG/NAME"
    local = repo.split("/")[-1]
    page = f"https://huggingface.co/{'datasets/' if entry.hf_repo_type == 'dataset' else ''}{repo}"
    gated = f"accept the terms on {page} and run 'huggingface-cli login' first, then " if entry.gated else ""
    files = "".join(f" {f}" for f in entry.download_files)
    kind = " --repo-type dataset" if entry.hf_repo_type == "dataset" else ""
    return (f"on a machine with internet {gated}run 'huggingface-cli download {repo}{files}{kind} --local-dir {local}', "
            f"carry the folder to this node (e.g. 'rsync -a {local}/ NODE:/models/{local}/' or a USB disk) "
            f"and pass --encoder {entry.name} --weights /models/{local}; or, if it was downloaded into that "
            f"machine's Hugging Face cache (no --local-dir), copy its {cache_folder_name(repo, entry.hf_repo_type)} "
            f"folder (refs/, snapshots/, blobs/) into {hf_cache_dir()} here and pass --weights hub")


def missing_weights_error(entry: EncoderEntry, looked: list[Path]) -> EncoderError:
    """The one-line error for weights that are not on this machine (never a random fallback)."""
    where = ", ".join(str(p) for p in looked)
    return EncoderError(f"encoder '{entry.name}': weights not found on this machine (looked in {where}); "
                        f"{download_advice(entry)}")
