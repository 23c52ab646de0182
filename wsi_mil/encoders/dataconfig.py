"""``DataConfig``: how tiles are prepared for an encoder, typed, frozen and validated in one place.

The part of timm's ``PretrainedCfg`` that the pipeline uses: the model's input size, the
per-channel normalisation and the resize mode. It is built in one of three ways, each through
this module: from a ready-made registry entry, from timm's resolved data config
(:meth:`DataConfig.from_timm`), or from the ``data_config`` mapping of an ``encoder.json``
(:meth:`DataConfig.from_dict`). :meth:`DataConfig.to_dict` gives the JSON form written to
``encoder.json`` and, key by key, to feature-file attributes::

    {"input_size": [3, H, W], "mean": [r, g, b], "std": [r, g, b], "interpolation": "bilinear"}

This module is light: it imports neither torch nor timm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from wsi_mil.errors import EncoderError

#: the keys of the JSON form, in the order they are written
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation")


@dataclass(frozen=True)
class DataConfig:
    """How tiles are prepared for an encoder.

    ``input_size``: (C, H, W), the channels and pixel size the model takes. ``mean``, ``std``:
    C floats each, the normalisation of pixels on [0, 1] (``(x - mean) / std``; std > 0).
    ``interpolation``: the resize mode for tiles whose side differs from H x W (``bilinear``,
    ``bicubic``, ``nearest``; other names resize bilinearly on the device).
    Raises :class:`~wsi_mil.errors.EncoderError` when a value is out of shape.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    def __post_init__(self) -> None:
        size = tuple(self.input_size)
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise EncoderError(f"data_config input_size {list(size)}: expected [C, H, W], positive integers")
        channels = size[0]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels or not all(isinstance(v, float) and math.isfinite(v) for v in values):
                raise EncoderError(f"data_config {name} {list(values)}: expected {channels} finite floats "
                                   f"(one per channel of input_size {list(size)})")
        if not all(v > 0 for v in self.std):
            raise EncoderError(f"data_config std {list(self.std)}: every value must be > 0")
        if not isinstance(self.interpolation, str) or not self.interpolation:
            raise EncoderError(f"data_config interpolation {self.interpolation!r}: expected a name such as 'bilinear'")

    # -- views -----------------------------------------------------------------------------
    @property
    def hw(self) -> tuple[int, int]:
        """(H, W): the pixel size the model takes."""
        return self.input_size[1], self.input_size[2]

    def with_side(self, side: int) -> DataConfig:
        """The same config for square ``side`` x ``side`` px inputs."""
        return replace(self, input_size=(self.input_size[0], int(side), int(side)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``encoder.json``'s ``data_config``, feature-file attributes): lists, not tuples."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def __getitem__(self, key: str) -> Any:
        """Read-only access to the JSON form by key (``cfg["mean"]`` is ``list(cfg.mean)``), for
        callers written against the former dict; new code reads the attributes."""
        if key not in DATA_CONFIG_KEYS:
            raise KeyError(key)
        return self.to_dict()[key]

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(cls, input_size: Any, mean: Any, std: Any, interpolation: Any) -> DataConfig:
        """A config from loosely typed values (sequences of numbers, any string-like mode)."""
        return cls(
            input_size=tuple(int(v) for v in input_size),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            interpolation=str(interpolation),
        )

    @classmethod
    def from_dict(cls, data: Any, source: str = "data_config") -> DataConfig:
        """The config of a JSON-form mapping (extra keys are ignored).

        ``source`` names where it came from in the :class:`EncoderError` raised for a missing
        key or a value out of shape.
        """
        if isinstance(data, DataConfig):
            return data
        if not isinstance(data, Mapping):
            raise EncoderError(f"{source}: data_config is a {type(data).__name__}, expected a mapping "
                               f"with {', '.join(DATA_CONFIG_KEYS)}")
        missing = [k for k in DATA_CONFIG_KEYS if k not in data]
        if missing:
            raise EncoderError(f"{source}: data_config lacks {', '.join(missing)}")
        try:
            return cls.create(data["input_size"], data["mean"], data["std"], data["interpolation"])
        except EncoderError as exc:
            raise EncoderError(f"{source}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise EncoderError(f"{source}: data_config is not valid ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def from_timm(cls, resolved: Mapping[str, Any], source: str = "timm") -> DataConfig:
        """The config of timm's ``resolve_model_data_config(model)`` (missing interpolation: bilinear)."""
        data = dict(resolved)
        data["interpolation"] = data.get("interpolation") or "bilinear"
        return cls.from_dict(data, source)
