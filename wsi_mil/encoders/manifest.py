"""Weights manifest: a YAML file that pins the exact weights a study uses, by sha256.

::

    # weights.yaml: entry -> path (file or publisher folder; relative to this file) and sha256
    uni:
      path: /models/UNI
      sha256: 56ef09b44a25dc5c7eedc55551b3d47bcd17659a7a33837cf9abc9ec4e2ffb40
    virchow2:
      path: Virchow2/pytorch_model.bin
      sha256: ...

``sha256`` is the hex digest of the weights *file* (``sha256sum pytorch_model.bin``); for a
folder, of the weights file found in it. ``wsi-mil extract --weights-manifest weights.yaml``
then uses the pinned path when ``--weights`` is not given, and refuses any weights file whose
digest differs (a different download, a corrupted copy, another model).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from wsi_mil.errors import EncoderError

_HEX = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class PinnedWeights:
    """One manifest line: ``path`` (absolute) and ``sha256`` (64 lower-case hex digits)."""

    entry: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class WeightsManifest:
    """A parsed manifest: ``file`` and ``pins`` (entry name -> :class:`PinnedWeights`)."""

    file: Path
    pins: dict[str, PinnedWeights]

    def pin(self, entry: str) -> PinnedWeights:
        """The pin of ``entry``; :class:`EncoderError` when the manifest does not list it."""
        if entry not in self.pins:
            raise EncoderError(f"{self.file}: pins no weights for encoder '{entry}' (it lists "
                               f"{', '.join(sorted(self.pins)) or 'nothing'}); add '{entry}: {{path: ..., sha256: ...}}'")
        return self.pins[entry]

    def verify(self, entry: str, file: str | Path) -> str:
        """Check ``file`` against the pin of ``entry``; returns its ``sha256:`` digest."""
        pin = self.pin(entry)
        digest = file_sha256(file)
        if digest != pin.sha256:
            raise EncoderError(f"{file}: sha256 {digest} differs from {pin.sha256} pinned for '{entry}' in "
                               f"{self.file}; these are not the weights the study pinned (re-copy them, or update "
                               "the manifest if the change is intended)")
        return "sha256:" + digest


def file_sha256(path: str | Path, block: int = 8 << 20) -> str:
    """Hex sha256 of every byte of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path: str | Path) -> WeightsManifest:
    """Read and validate a manifest; :class:`EncoderError` naming the file and the bad line."""
    file = Path(path)
    if not file.is_file():
        raise EncoderError(f"{file}: weights manifest not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise EncoderError(f"{file}: not a readable YAML weights manifest ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(data, dict) or not data:
        raise EncoderError(f"{file}: expected a mapping 'entry: {{path: ..., sha256: ...}}'")
    pins: dict[str, PinnedWeights] = {}
    for name, item in data.items():
        if not isinstance(item, dict) or set(item) != {"path", "sha256"}:
            raise EncoderError(f"{file}: entry '{name}' must have exactly the keys path and sha256")
        if not isinstance(item["sha256"], str):
            raise EncoderError(f"{file}: entry '{name}': sha256 was read as a {type(item['sha256']).__name__}, "
                               "not text; put it in quotes")
        m = _HEX.match(item["sha256"].strip())
        if not m:
            raise EncoderError(f"{file}: entry '{name}': sha256 {item['sha256']!r} is not 64 hex digits "
                               "(the output of 'sha256sum FILE')")
        where = Path(str(item["path"])).expanduser()
        pins[str(name)] = PinnedWeights(str(name), where if where.is_absolute() else (file.parent / where).resolve(),
                                        m.group(1).lower())
    return WeightsManifest(file.resolve(), pins)
