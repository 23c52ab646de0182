"""Encoder weights: read checkpoints, match them to a model with precise errors, hash them.

Sources: ``.safetensors``, PyTorch pickles (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.pth.tar``)
holding a state dict directly or under a timm/Lightning key (``state_dict``, ``model``,
``state_dict_ema``, ...), and timm pretrained weights found in the user's *local* cache
(Hugging Face hub cache or the torch hub checkpoint folder). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from wsi_mil.encoders.entry import EncoderEntry
from wsi_mil.encoders.sources import hf_cache_dir
from wsi_mil.errors import EncoderError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
#: keys under which checkpoints commonly nest their state dict, in order of preference
NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module", "net", "backbone")
#: prefixes stripped when every key carries them (DDP, torch.compile, wrappers)
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "trunk.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file onto the CPU (no code is unpickled).

    Returns a flat ``{name: tensor}`` after unwrapping nested keys and common prefixes.
    """
    path = Path(path)
    if not path.exists():
        raise EncoderError(f"{path}: weights file not found; give a .safetensors/.pth/.bin file, "
                           "an encoder folder from 'wsi-mil pretrain', 'timm' or 'random'")
    if path.is_dir():
        raise EncoderError(f"{path}: is a folder without encoder.json; give the weights file inside it")
    name = path.name.lower()
    try:
        if name.endswith(".safetensors"):
            obj: Any = load_file(str(path), device="cpu")
        elif name.endswith(TORCH_SUFFIXES):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise EncoderError(
                f"{path}: unknown weights format '{path.suffix}'; expected .safetensors, .pth, .pt, .bin or .ckpt"
            )
    except EncoderError:
        raise
    except Exception as exc:  # corrupt file, foreign pickle, truncated download
        msg = " ".join(str(exc).split())[:200]
        raise EncoderError(f"{path}: cannot read weights ({type(exc).__name__}: {msg})") from exc
    return _flatten(path, obj)


def _flatten(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            for key in NESTED_KEYS:
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise EncoderError(f"{path}: holds no state dict of tensors (top-level keys: "
                           f"{', '.join(list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _is_state_dict(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _some(items: list[str], n: int = 5) -> str:
    """The first ``n`` of ``items``, comma-separated, with a count of the rest."""
    if not items:
        return "-"
    more = f", ... {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(int(s)) for s in t.shape) + ")"


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, arch: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``model`` strictly, with one-line errors naming ``source``.

    Classifier heads absent from the model (``num_classes=0``) and keys under
    ``ignore_prefixes`` (a truncated stage) are dropped first. A checkpoint whose names mostly
    do not match is reported as one for another architecture; otherwise missing or unexpected
    tensors and shape mismatches are named with expected vs found shapes.
    """
    expected = model.state_dict()
    head_prefixes = ("fc.", "head.", "classifier.", "head_dist.", "last_linear.")
    sd = {
        k: v for k, v in state_dict.items()
        if not k.startswith(ignore_prefixes)
        and not (k.startswith(head_prefixes) and k not in expected)
        and not k.endswith("num_batches_tracked")
    }
    want = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing = sorted(want - set(sd))
    unexpected = sorted(set(sd) - want)
    if want and len(missing) > len(want) // 2:
        raise EncoderError(
            f"{source}: not a checkpoint for '{arch}': {len(missing)} of its {len(want)} tensors are "
            f"missing ({_some(missing)}) and {len(unexpected)} are foreign ({_some(unexpected)}); "
            "pass the architecture it was trained with as --encoder"
        )
    mismatched = [f"{k} {_shape(sd[k])} vs expected {_shape(expected[k])}"
                  for k in sorted(want & set(sd)) if expected[k].shape != sd[k].shape]
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} with another shape ({_some(mismatched)})")
    if missing:
        parts.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    if parts:
        raise EncoderError(f"{source}: does not match '{arch}': tensors {'; '.join(parts)}; the checkpoint is "
                           "for another architecture, width or variant (nothing was loaded)")
    model.load_state_dict(sd, strict=False)


def state_dict_hash(model: nn.Module) -> str:
    """``sha256:...`` over the model's tensors (names, dtypes, shapes and bytes, in name order).

    Independent of the file format the weights came from: the same weights give the same hash.
    BatchNorm's ``num_batches_tracked`` counters are bookkeeping, not weights, and are not
    loaded from checkpoints (:func:`load_into`), so they are left out here too.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def find_cached_timm_weights(pretrained_cfg: Mapping[str, Any]) -> Path | None:
    """The local file of a timm pretrained config, from the HF hub cache or torch hub; else None.

    Only looks on disk: never contacts the network.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        # imported only now, after HF_HUB_OFFLINE is set (huggingface_hub reads it when loaded)
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(hub_id).partition("@")
        names = [str(pretrained_cfg["hf_hub_filename"])] if pretrained_cfg.get("hf_hub_filename") else []
        names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()),
                                           revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(url).split("?")[0])
        if cached.is_file():
            return cached
    return None


#: timm ``model_args`` compared between a publisher's ``config.json`` and the entry
_TIMM_SHAPE_ARGS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "reg_tokens", "no_embed_class",
                    "class_token")


def check_timm_config(config: Mapping[str, Any], entry: EncoderEntry, file: str | Path) -> None:
    """Refuse a timm-format ``config.json`` (``architecture``, ``model_args``) for another model.

    The architecture name and the shape arguments both sides give must agree; each difference
    is named. Arguments only one side gives are left to the strict key and shape check.
    """
    where = Path(file).parent / "config.json"
    arch = config.get("architecture")
    if arch and arch != entry.timm_arch:
        raise EncoderError(f"{where}: describes a '{arch}', but encoder '{entry.name}' is a '{entry.timm_arch}'; "
                           "is this the folder of another model?")
    args = config.get("model_args")
    if not isinstance(args, Mapping):
        return
    diffs = []
    for key in _TIMM_SHAPE_ARGS:
        if key in args and key in entry.timm_kwargs:
            got, want = args[key], entry.timm_kwargs[key]
            same = (abs(float(got) - float(want)) <= 1e-4 * abs(float(want))
                    if isinstance(got, (int, float)) and isinstance(want, (int, float)) else got == want)
            if not same:
                diffs.append(f"{key} {got!r} (entry: {want!r})")
    if diffs:
        raise EncoderError(f"{where}: model_args differ from encoder '{entry.name}': {'; '.join(diffs)}")
