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
    """Base of every config section: unknown keys are errors, assignments are validated, and no
    number may be NaN or infinite (``--set tiling.target_mpp=inf`` is an error, not a hang)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def format_validation_error(
    exc: ValidationError, source: str, origins: dict[tuple[str, ...], str] | None = None
) -> str:
    """One line naming each bad key (dotted path) and what is wrong with it.

    ``origins`` maps key paths to where their value came from (``--set KEY=VALUE``, a CLI option):
    an error under such a key blames that origin instead of ``source`` (the file).
    """
    blamed: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            text = f"unknown key '{key}'"
        elif err["type"] == "missing":
            text = f"missing required key '{key}'"
        else:
            text = f"'{key}': {err['msg']} (got {err.get('input')!r})"
        origin = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if origins and loc[:n] in origins), source)
        blamed.setdefault(origin, []).append(text)
    return "; ".join(f"{origin}: invalid config: " + "; ".join(parts) for origin, parts in blamed.items())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from exc
    except (OSError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({type(exc).__name__}: {exc})") from exc
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
    origins: dict[tuple[str, ...], str] = {}
    for k, v in (cli or {}).items():
        if v is not None:
            data[k] = v
            origins[(k,)] = f"command-line option for '{k}'"
    for text in overrides or []:
        origins[tuple(parse_override(text)[0])] = f"--set {text}"
    data = apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, origins)) from exc


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON-ready dict of a config (recorded in every output's attributes)."""
    return cfg.model_dump(mode="json")
