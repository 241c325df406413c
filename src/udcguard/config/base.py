"""The base of every params model (frozen, unknown keys rejected) and shared field types."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Frozen(BaseModel):
    """Base: immutable, unknown keys rejected. A field whose choices include ``"off"`` also takes
    ``false``: YAML 1.1 reads a bare ``off`` (params.yaml, or ``--set key=off``) as false."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _off_is_not_false(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        off = [k for k, v in data.items() if v is False and k in cls.model_fields
               and "off" in _choices(cls.model_fields[k].annotation)]
        return {**data, **dict.fromkeys(off, "off")} if off else data


def _choices(annotation: Any) -> set[Any]:
    """The Literal values an annotation allows, through unions and Annotated."""
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    return {c for a in get_args(annotation) for c in _choices(a)}


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


Wavelength = Annotated[float, Field(gt=300.0, lt=1100.0)]


Device = Literal["auto", "cpu", "cuda"]


Size = Literal["tiny", "small", "paper"]


def named_from_mapping(v: Any, where: str, key: str) -> Any:
    """``{name: {...}}`` -> ``[{key: name, ...}]``: params.yaml keys entries by name."""
    if isinstance(v, dict):
        out = []
        for name, spec in v.items():
            if not isinstance(spec, dict):
                raise ValueError(f"{where}.{name}: expected a mapping")
            if key in spec and spec[key] != name:
                raise ValueError(f"{where}.{name}: {key} {spec[key]!r} differs from its key")
            out.append({**spec, key: name})
        return out
    return v
