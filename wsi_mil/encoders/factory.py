"""``create_encoder(arch, weights)``: one factory for every encoder the pipeline runs.

``weights`` is ``"random"`` (``"random:SEED"``; tests and baselines only), ``"timm"`` (timm
pretrained weights already in the local cache; nothing is downloaded), ``"hub"`` (a publisher
entry's repository in the local Hugging Face cache), a checkpoint file, a publisher folder
(``huggingface-cli download ORG/NAME --local-dir DIR``), or an encoder folder written by
``wsi-mil pretrain`` (which records its architecture, so ``arch`` may be ``None``). Publisher
weights in transformers' layout are converted to the timm model (:mod:`wsi_mil.encoders.convert`).
The encoder id names the recipe, the weights source and their content hash:
``{arch}-{weights tag}-{first 8 hex of the weights hash}``, e.g. ``resnet50_trunc-timm-1f2e3d4c``;
features from stain-normalised tiles add ``-{method}`` (:func:`stain_encoder_id`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.build import build_backbone, pooling_has_weights, with_pooling
from wsi_mil.encoders.conch import conch_to_timm
from wsi_mil.encoders.convert import check_hf_config, hf_to_timm
from wsi_mil.encoders.ctranspath import ctranspath_to_timm
from wsi_mil.encoders.dataconfig import DataConfig
from wsi_mil.encoders.folder import ENCODER_JSON, WEIGHTS_FILE, embed_dim_of, is_encoder_dir, read_encoder_json
from wsi_mil.encoders.manifest import WeightsManifest, load_manifest
from wsi_mil.encoders.registry import EncoderEntry, resolve_arch
from wsi_mil.encoders.sources import (
    download_advice,
    find_in_hf_cache,
    hf_cache_dir,
    missing_weights_error,
    publisher_folder,
    read_config_json,
)
from wsi_mil.encoders.weights import check_timm_config, find_cached_timm_weights, load_into, read_state_dict, state_dict_hash
from wsi_mil.errors import EncoderError


@dataclass
class Encoder:
    """A ready encoder (CPU, eval mode).

    ``model`` maps (B, 3, H, W) float images normalised with ``data_config`` to (B, embed_dim)
    features. ``arch`` is the name that rebuilds it (entry or timm architecture), ``timm_arch``
    the underlying timm model. ``data_config``: input size, mean/std and resize mode
    (:class:`~wsi_mil.encoders.dataconfig.DataConfig`).
    """

    model: nn.Module
    arch: str
    timm_arch: str
    encoder_id: str
    embed_dim: int
    data_config: DataConfig
    weights_source: str
    weights_hash: str
    pooling: str = "model"
    weights_file_sha256: str | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) pixels the model expects."""
        return self.data_config.hw

    def attrs(self) -> dict[str, Any]:
        """The encoder's part of a feature file's attributes."""
        return {
            "encoder_id": self.encoder_id,
            "encoder_arch": self.arch,
            "timm_arch": self.timm_arch,
            "weights_source": self.weights_source,
            "weights_hash": self.weights_hash,
            "embed_dim": self.embed_dim,
            "pooling": self.pooling,
            **({"weights_file_sha256": self.weights_file_sha256} if self.weights_file_sha256 else {}),
            **self.data_config.to_dict(),
        }


def safe_name(text: str, limit: int = 40) -> str:
    """A filesystem-safe token: letters, digits, ``.``, ``_``; other runs become ``_``."""
    out = re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("._")
    return out[:limit] or "x"


def stain_encoder_id(encoder_id: str, stain_norm: str = "none") -> str:
    """The id of the features an encoder makes from stain-normalised tiles: ``{encoder_id}-{method}``.

    ``none`` leaves ``encoder_id`` as it is, so features with and without normalisation (or with
    two methods) live in different ``features/{id}/`` folders and never mix.
    """
    method = str(stain_norm).strip().lower()
    return encoder_id if method in ("", "none") else f"{encoder_id}-{safe_name(method)}"


def _parse_random(weights: str) -> int | None:
    if weights == "random":
        return 0
    m = re.fullmatch(r"random:(\d+)", weights)
    if m:
        return int(m.group(1))
    if weights.startswith("random"):
        raise EncoderError(f"--weights '{weights}': use 'random' or 'random:SEED' with an integer seed")
    return None


def truncate_model(model: nn.Module, entry: EncoderEntry) -> tuple[str, ...]:
    """Cut a ResNet after ``entry.truncate_after``; returns the state-dict prefixes dropped."""
    stage = entry.truncate_after
    if not stage:
        return ()
    stages = [f"layer{i}" for i in range(1, 5)]
    if stage not in stages or not all(hasattr(model, s) for s in stages):
        raise EncoderError(f"encoder '{entry.name}': cannot truncate '{entry.timm_arch}' after '{stage}'")
    dropped = stages[stages.index(stage) + 1:]
    for s in dropped:
        setattr(model, s, nn.Identity())
    info = {d["module"]: d["num_chs"] for d in getattr(model, "feature_info", [])}
    model.num_features = model.head_hidden_size = int(info[stage])  # type: ignore[assignment]
    return tuple(f"{s}." for s in dropped)


def _data_config(model: nn.Module, entry: EncoderEntry) -> DataConfig:
    """The entry's data config, else timm's for the built model."""
    if entry.data_config is not None:
        return entry.data_config
    from timm.data import resolve_model_data_config

    return DataConfig.from_timm(resolve_model_data_config(model), f"timm data config of '{entry.timm_arch}'")


def _timm_weights(entry: EncoderEntry) -> tuple[nn.Module, str, Path]:
    from timm.models import get_pretrained_cfg

    name = f"{entry.timm_arch}.{entry.timm_tag}" if entry.timm_tag else entry.timm_arch
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise EncoderError(f"encoder '{entry.name}': timm has no pretrained weights named '{name}'")
    cfg_dict = cfg.to_dict()
    path = find_cached_timm_weights(cfg_dict)
    if path is None:
        where = cfg_dict.get("hf_hub_id") or cfg_dict.get("url")
        raise EncoderError(
            f"encoder '{entry.name}': timm weights '{name}' ({where}) are not in the local cache "
            f"(HF cache {hf_cache_dir()}, offline mode); "
            "nothing is downloaded: copy the weights file to this machine and pass it as --weights FILE"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = build_backbone(entry, name=name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": ""})
    return model, f"timm:{name} ({path})", path


def _publisher_only(entry: EncoderEntry, weights: str) -> EncoderError:
    return EncoderError(f"encoder '{entry.name}': --weights {weights} does not apply to a publisher's model; "
                        f"pass --weights hub (local Hugging Face cache) or the publisher folder: {download_advice(entry)}")


def _resolve_file(entry: EncoderEntry, weights: str) -> tuple[Path, dict[str, Any] | None, str, str]:
    """(weights file, the folder's config.json or None, source text, id tag) for a path or ``hub``."""
    if weights == "hub":
        found = find_in_hf_cache(entry)
        return found.file, found.config, f"{found.origin} ({found.file})", "hub"
    path = Path(weights)
    if path.is_dir():
        found = publisher_folder(path, entry)
        return found.file, found.config, f"{found.origin} ({found.file.name})", safe_name(path.resolve().name)
    if not path.exists() and entry.is_publisher_entry:
        raise missing_weights_error(entry, [path])
    config = read_config_json(path.parent) if entry.weights_format.startswith("hf_") and path.is_file() else None
    return path, config, str(path.resolve()), safe_name(path.name.split(".")[0])


def _load_publisher_file(model: nn.Module, entry: EncoderEntry, file: Path, config: dict[str, Any] | None,
                         dropped: tuple[str, ...], native: bool = False) -> None:
    """Read ``file``, convert it from the publisher's layout when needed, load it strictly.

    ``native``: the file is an encoder folder's (our own layout, written from this model): no conversion.
    """
    state = read_state_dict(file)
    if native:
        load_into(model, state, str(file), entry.name, ignore_prefixes=dropped)
        return
    if entry.weights_format == "conch_v15":
        state = conch_to_timm(state, model, str(file))
    elif entry.weights_format == "timm":
        if config is not None:
            check_timm_config(config, entry, file)
    elif entry.weights_format == "timm0_swin":
        state = ctranspath_to_timm(state, model, str(file))
    else:
        if config is not None:
            check_hf_config(config, entry.weights_format, model, str(file.parent / "config.json"))
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        state = hf_to_timm(state, entry.weights_format, str(file), grid=tuple(grid) if grid is not None else None)
    load_into(model, state, str(file), entry.name, ignore_prefixes=dropped)


def create_encoder(arch: str | None, weights: str | Path | None, seed: int | None = None,
                   manifest: str | Path | WeightsManifest | None = None) -> Encoder:
    """Build an encoder: architecture ``arch`` (entry or timm name) with ``weights``.

    ``weights``: ``"random"``/``"random:SEED"``, ``"timm"``, ``"hub"`` (the entry's repository in
    the local Hugging Face cache), a checkpoint file, a publisher folder (``config.json`` + weights
    file), or an encoder folder (then ``arch`` may be ``None``); None takes the path pinned in
    ``manifest``. ``manifest``: a weights manifest (:mod:`wsi_mil.encoders.manifest`): the
    weights file must have the pinned sha256. Raises :class:`EncoderError` with a one-line
    message for unknown architectures, missing weights (with the command that fetches them),
    foreign checkpoints, mismatched keys or shapes and checksum mismatches. Never falls back to
    random weights.
    """
    pins = load_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
    if weights is None:
        if pins is None or not arch:
            raise EncoderError("give --weights: a weights file, a publisher or encoder folder, 'hub', 'timm' or "
                               "'random' (or --encoder ARCH with a --weights-manifest that pins it)")
        weights = pins.pin(resolve_arch(arch).name).path
    weights_str = str(weights)
    folder_meta: dict[str, Any] | None = None
    if Path(weights_str).is_dir() and is_encoder_dir(weights_str):
        folder_meta = read_encoder_json(weights_str)
        recorded = str(folder_meta["arch"])
        same = (lambda a, b: (a.timm_arch, a.truncate_after) == (b.timm_arch, b.truncate_after))
        if arch and not same(resolve_arch(arch), resolve_arch(recorded)):
            raise EncoderError(
                f"{weights_str}: this encoder folder holds a '{recorded}', but --encoder '{arch}' was "
                "given; omit --encoder (the folder records its architecture)"
            )
        arch = recorded
    if not arch:
        raise EncoderError(f"--weights '{weights_str}': give the architecture with --encoder ARCH "
                           "(only encoder folders from 'wsi-mil pretrain' record it)")
    entry = resolve_arch(arch)

    file_digest: str | None = None
    random_seed = _parse_random(weights_str) if folder_meta is None else None
    if random_seed is not None:
        if pins is not None:
            raise EncoderError(f"{pins.file}: a weights manifest pins weights files; --weights {weights_str} "
                               "has none (drop the manifest for random-init baselines)")
        random_seed = seed if seed is not None and weights_str == "random" else random_seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)
            model = build_backbone(entry)
            if pooling_has_weights(entry):  # the pooler's own tensors, drawn from the same seed
                model = with_pooling(model, entry)
        dropped = truncate_model(model, entry)
        source, tag = f"random:{random_seed}", f"random{random_seed}"
    elif weights_str == "timm":
        if entry.is_publisher_entry:
            raise _publisher_only(entry, weights_str)
        model, source, timm_file = _timm_weights(entry)
        if pins is not None:
            file_digest = pins.verify(entry.name, timm_file)
        dropped = truncate_model(model, entry)
        tag = "timm"
    else:
        if folder_meta is not None:
            file = Path(weights_str) / str(folder_meta.get("weights_file", WEIGHTS_FILE))
            config, source, tag = None, str(file.resolve()), safe_name(Path(weights_str).resolve().name)
        else:
            file, config, source, tag = _resolve_file(entry, weights_str)
        if pins is not None:
            file_digest = pins.verify(entry.name, file)
        model = build_backbone(entry)
        if pooling_has_weights(entry):  # the publisher's file holds the pooler's tensors too
            model = with_pooling(model, entry)
        dropped = truncate_model(model, entry)
        _load_publisher_file(model, entry, file, config, dropped, native=folder_meta is not None)
    model.eval()
    if folder_meta is not None:
        data_config = DataConfig.from_dict(folder_meta["data_config"], str(Path(weights_str) / ENCODER_JSON))
    else:
        data_config = _data_config(model, entry)
    digest = state_dict_hash(model)
    model = with_pooling(model, entry).eval()
    encoder_id = f"{safe_name(entry.name)}-{tag}-{digest.split(':')[1][:8]}"
    return Encoder(
        model=model,
        arch=entry.name,
        timm_arch=entry.timm_arch,
        encoder_id=encoder_id,
        embed_dim=embed_dim_of(model),
        data_config=data_config,
        weights_source=source,
        weights_hash=digest,
        pooling=entry.pooling,
        weights_file_sha256=file_digest,
    )
