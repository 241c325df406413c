"""Loading params.yaml: validation errors that name the file and the key path, ``--set``
overrides, and flattening for MLflow."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from udcguard.config.params import RENAMED_SECTIONS, Params
from udcguard.errors import ConfigError


#: Sections that params.yaml keys by name (the models hold them as tuples).
NAMED_SECTIONS = (("restorers",), ("attack", "attacks"))


def _named_loc(loc: tuple, data: dict | None) -> tuple:
    """Replace a tuple index in an error location by the entry's params.yaml key."""
    for section in NAMED_SECTIONS:
        n = len(section)
        if tuple(loc[:n]) == section and len(loc) > n and isinstance(loc[n], int):
            node: Any = data
            for k in section:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, dict) and loc[n] < len(node):
                return (*loc[:n], list(node)[loc[n]], *loc[n + 1:])
    return loc


def _format_error(source: str, err: ValidationError, data: dict | None = None) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in _named_loc(tuple(e["loc"]), data))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{more}"


def params_from_dict(data: dict, source: str = "params") -> Params:
    """Validate a plain dict; raise :class:`ConfigError` naming the first bad key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err, data)) from None
    except ConfigError:
        raise
    except Exception as err:  # e.g. UnknownNameError from a field validator
        raise ConfigError(f"{source}: {err}") from None


def set_override(data: dict, dotted: str, value: object) -> None:
    """Apply ``a.b.c=value`` to a nested dict (used by the CLI's ``--set``)."""
    keys = dotted.split(".")
    if keys[0] in RENAMED_SECTIONS and RENAMED_SECTIONS[keys[0]] in data:  # --set purifier.x=... on a new file
        warnings.warn(f"--set {dotted}: section {keys[0]!r} is deprecated, use {RENAMED_SECTIONS[keys[0]]!r}",
                      FutureWarning, stacklevel=2)
        keys[0] = RENAMED_SECTIONS[keys[0]]
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def load_params(path: str | Path = "params.yaml", overrides: dict[str, object] | None = None) -> Params:
    """Load and validate params.yaml; errors name the file and the key path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    for k, v in (overrides or {}).items():
        set_override(data, k, v)
    return params_from_dict(data, str(path))


def flatten(params: BaseModel, prefix: str = "") -> dict[str, str]:
    """Flatten a params model into dotted keys (for MLflow params)."""
    out: dict[str, str] = {}
    for key, value in params:
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            out.update(flatten(value, name + "."))
        elif isinstance(value, tuple) and value and all(isinstance(v, BaseModel) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}.{i}."))
        else:
            out[name] = str(value)
    return out
