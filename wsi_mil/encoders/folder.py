"""Encoder folders: what ``wsi-mil pretrain`` writes and ``extract --weights DIR`` reads.

``DIR/encoder.json``: ``schema`` (``wsi_mil.encoder/1``), ``wsi_mil_version``, ``arch`` (an
entry or timm architecture, enough to rebuild the model), ``embed_dim``, ``data_config``
(:meth:`DataConfig.to_dict`: ``input_size`` [3, H, W], ``mean``, ``std``, ``interpolation``), ``training`` (the config
dict that produced it), ``patch_stores`` (paths seen), ``weights_file`` and ``weights_hash``.
``DIR/encoder.safetensors``: the backbone's ``state_dict()`` built with ``num_classes=0``.
The folder is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from wsi_mil import __version__
from wsi_mil.atomic import atomic_path
from wsi_mil.encoders.build import ClsMeanPool
from wsi_mil.encoders.dataconfig import DataConfig
from wsi_mil.encoders.registry import resolve_arch
from wsi_mil.encoders.weights import state_dict_hash
from wsi_mil.errors import EncoderError
from wsi_mil.stores.common import ENCODER_SCHEMA, read_schema_json

ENCODER_JSON = "encoder.json"
WEIGHTS_FILE = "encoder.safetensors"
REQUIRED_KEYS = ("schema", "arch", "embed_dim", "data_config", "weights_file")


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind ``torch.compile`` / DDP wrappers."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


def embed_dim_of(model: nn.Module) -> int:
    """Width D of the (B, D) features of a timm backbone built with ``num_classes=0``."""
    width: Any = getattr(model, "head_hidden_size", None) or model.num_features  # timm sets both as ints
    return int(width)


def save_encoder_dir(
    path: str | Path,
    model: nn.Module,
    arch: str,
    data_config: DataConfig | Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
    patch_stores: Sequence[str | Path] = (),
) -> Path:
    """Write an encoder folder atomically; returns ``path``.

    ``model``: a timm backbone built with ``num_classes=0`` (outputs (B, D)); ``arch``: the name
    that rebuilds it with :func:`~wsi_mil.encoders.create_encoder`; ``data_config``: a
    :class:`DataConfig` or its JSON form (:meth:`DataConfig.from_dict`; extra keys are dropped).
    """
    resolve_arch(arch)
    config = DataConfig.from_dict(data_config, str(path))
    model = _unwrap(model)
    # an entry's pooling (ClsMeanPool) is rebuilt from its arch: store the backbone's tensors, as loaded
    backbone = model.backbone if isinstance(model, ClsMeanPool) else model
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.state_dict().items()}
    meta = {
        "schema": ENCODER_SCHEMA,
        "wsi_mil_version": __version__,
        "arch": arch,
        "embed_dim": embed_dim_of(model),
        "data_config": config.to_dict(),
        "training": dict(training or {}),
        "patch_stores": [str(p) for p in patch_stores],
        "weights_file": WEIGHTS_FILE,
        "weights_hash": state_dict_hash(backbone),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"schema": ENCODER_SCHEMA, "arch": arch})
        (tmp / ENCODER_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def is_encoder_dir(path: str | Path) -> bool:
    """True if ``path`` is a folder holding ``encoder.json``."""
    return (Path(path) / ENCODER_JSON).is_file()


def read_encoder_json(path: str | Path) -> dict[str, Any]:
    """Read and validate ``DIR/encoder.json``; raises :class:`EncoderError` naming the file."""
    file = Path(path) / ENCODER_JSON
    if not file.is_file():
        raise EncoderError(f"{path}: not an encoder folder (no {ENCODER_JSON}); run 'wsi-mil pretrain' "
                           "or pass a weights file")
    meta = read_schema_json(file, ENCODER_SCHEMA, tuple(REQUIRED_KEYS), EncoderError)
    if not (Path(path) / str(meta["weights_file"])).is_file():
        raise EncoderError(f"{path}: weights file '{meta['weights_file']}' named in {ENCODER_JSON} is missing")
    return meta
