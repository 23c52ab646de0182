"""Typed configuration: pydantic models, YAML files, ``--set key=value`` overrides.

Precedence: model defaults < YAML file < CLI overrides. Unknown keys and wrong types are errors
that name the key and the file (:class:`~wsi_mil.errors.ConfigError`), never silently ignored.
Each stage defines its own section model in its package's ``config.py``; this module holds the
shared machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from wsi_mil.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming each bad key (dotted path) and what is wrong with it."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
    return f"{source}: invalid config: " + "; ".join(parts)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'tiling.target_mpp=0.25'`` -> (['tiling', 'target_mpp'], 0.25); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. tiling.target_mpp=0.25")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``KEY=VALUE`` overrides applied."""
    out: dict[str, Any] = _deep_copy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def build_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    cli: dict[str, Any] | None = None,
    section: str | None = None,
    section_optional: bool = False,
) -> M:
    """Build a config: defaults < YAML ``path`` (optionally one ``section`` of it) < ``cli`` < overrides.

    ``cli`` holds values of explicit CLI options; ``None`` values (options not given) are ignored.
    ``section_optional``: the YAML is either a whole study (its ``section`` is used) or that
    section alone (a file without the key), as a stage command's ``--config`` accepts.
    """
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        data = load_yaml(path)
        source = str(path)
        if section is not None and (section in data or not section_optional):
            sub = data.get(section, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{path}: '{section}' must be a mapping")
            data = sub
    for k, v in (cli or {}).items():
        if v is not None:
            data[k] = v
    data = apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON-ready dict of a config (recorded in every output's attributes)."""
    return cfg.model_dump(mode="json")
