"""The base of every params model (frozen, unknown keys rejected) and shared field types."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field



class Frozen(BaseModel):
    """Base: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
