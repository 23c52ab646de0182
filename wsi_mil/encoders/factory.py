"""``create_encoder(arch, weights)``: one factory for every encoder the pipeline runs.

``weights`` is ``"random"`` (``"random:SEED"``; tests and baselines only), ``"timm"`` (timm
pretrained weights already in the local cache; nothing is downloaded), a checkpoint file, or an
encoder folder written by ``wsi-mil pretrain`` (which records its architecture, so ``arch`` may
be ``None``). The encoder id names the recipe, the weights source and their content hash:
``{arch}-{weights tag}-{first 8 hex of the weights hash}``, e.g. ``resnet50_trunc-timm-1f2e3d4c``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.dataconfig import DataConfig
from wsi_mil.encoders.folder import ENCODER_JSON, WEIGHTS_FILE, embed_dim_of, is_encoder_dir, read_encoder_json
from wsi_mil.encoders.registry import EncoderEntry, resolve_arch
from wsi_mil.encoders.weights import find_cached_timm_weights, load_into, read_state_dict, state_dict_hash
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
            **self.data_config.to_dict(),
        }


def safe_name(text: str, limit: int = 40) -> str:
    """A filesystem-safe token: letters, digits, ``.``, ``_``; other runs become ``_``."""
    out = re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("._")
    return out[:limit] or "x"


def _parse_random(weights: str) -> int | None:
    if weights == "random":
        return 0
    m = re.fullmatch(r"random:(\d+)", weights)
    if m:
        return int(m.group(1))
    if weights.startswith("random"):
        raise EncoderError(f"--weights '{weights}': use 'random' or 'random:SEED' with an integer seed")
    return None


def _truncate(model: nn.Module, entry: EncoderEntry) -> tuple[str, ...]:
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


def _build(entry: EncoderEntry, name: str | None = None, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name or entry.timm_arch, num_classes=0, **kwargs)
    except EncoderError:
        raise
    except Exception as exc:  # timm's own errors (bad kwargs, unloadable weights)
        msg = " ".join(str(exc).split())[:300]
        raise EncoderError(f"encoder '{entry.name}': timm cannot build '{entry.timm_arch}' ({type(exc).__name__}: {msg})") from exc


def _timm_weights(entry: EncoderEntry) -> tuple[nn.Module, str]:
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
            f"(HF cache {os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}, offline mode); "
            "nothing is downloaded: copy the weights file to this machine and pass it as --weights FILE"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = _build(entry, name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": ""})
    return model, f"timm:{name} ({path})"


def create_encoder(arch: str | None, weights: str | Path, seed: int | None = None) -> Encoder:
    """Build an encoder: architecture ``arch`` (entry or timm name) with ``weights``.

    ``weights``: ``"random"``/``"random:SEED"``, ``"timm"``, a checkpoint file, or an encoder
    folder (then ``arch`` may be ``None``). Raises :class:`EncoderError` with a one-line message
    for unknown architectures, missing files, foreign checkpoints and mismatched shapes.
    """
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

    random_seed = _parse_random(weights_str) if folder_meta is None else None
    if random_seed is not None:
        random_seed = seed if seed is not None and weights_str == "random" else random_seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)
            model = _build(entry, pretrained=False)
        dropped = _truncate(model, entry)
        source, tag = f"random:{random_seed}", f"random{random_seed}"
    elif weights_str == "timm":
        model, source = _timm_weights(entry)
        dropped = _truncate(model, entry)
        tag = "timm"
    else:
        model = _build(entry, pretrained=False)
        dropped = _truncate(model, entry)
        if folder_meta is not None:
            file = Path(weights_str) / str(folder_meta.get("weights_file", WEIGHTS_FILE))
            tag = safe_name(Path(weights_str).resolve().name)
        else:
            file = Path(weights_str)
            tag = safe_name(file.name.split(".")[0])
        load_into(model, read_state_dict(file), str(file), entry.name, ignore_prefixes=dropped)
        source = str(file.resolve())
    model.eval()
    if folder_meta is not None:
        data_config = DataConfig.from_dict(folder_meta["data_config"], str(Path(weights_str) / ENCODER_JSON))
    else:
        data_config = _data_config(model, entry)
    digest = state_dict_hash(model)
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
    )
