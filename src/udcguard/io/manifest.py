"""The dataset manifest: one JSON per split listing every pair (data contract).

``data/udc/<split>/manifest.json``::

    {"version": 1, "split": "train", "seed": 0, "dtype": "float32", "crop_px": 64,
     "scenes": [...], "groups": ["photo:astronaut", "photo:motorcycle", ...],
     "pairs": [{"id": "train-00000", "gt": "gt/train-00000.npy", "lq": "lq/train-00000.npy",
                "scene": "photo:astronaut", "group": "photo:astronaut", "psf": "toled",
                "crop": [y, x, h, w], "seed": [...], "sha256": {"gt": "...", "lq": "..."},
                ...}, ...]}

Paths inside are relative to the split directory. ``group`` is the pair's scene group
(scenes that show one place share one; splits never share a group). Manifests written
before groups existed load with ``group = scene`` and ``groups`` = the pairs' groups.
Later stages read it with :func:`load_manifest`, which checks the structure and names the
file on error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from udcguard.errors import UdcGuardError
from udcguard.io.atomic import read_json

MANIFEST_VERSION = 1


class PairRecord(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    gt: str
    lq: str
    scene: str
    group: str
    psf: str
    crop: tuple[int, int, int, int]
    seed: tuple[int, ...]
    sha256: dict[str, str]

    @model_validator(mode="before")
    @classmethod
    def _group_defaults_to_scene(cls, data: Any) -> Any:
        if isinstance(data, dict) and "group" not in data and "scene" in data:
            return {**data, "group": data["scene"]}
        return data


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    version: int
    split: str
    seed: int
    dtype: str
    crop_px: int
    groups: tuple[str, ...] = ()
    pairs: tuple[PairRecord, ...]

    @model_validator(mode="after")
    def _groups(self) -> Manifest:
        used = sorted({p.group for p in self.pairs})
        if not self.groups:
            object.__setattr__(self, "groups", tuple(used))  # old manifest: the pairs' groups
        elif missing := [g for g in used if g not in self.groups]:
            raise ValueError(f"pair group(s) {', '.join(missing)} not in the manifest's groups")
        return self


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; errors name the file."""
    path = Path(path)
    data: Any = read_json(path, "manifest", hint=" (run the synthesize stage)")
    try:
        m = Manifest.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(map(str, e["loc"]))
        raise UdcGuardError(f"{path}: {where + ': ' if where else ''}{e['msg']}") from None
    if m.version != MANIFEST_VERSION:
        raise UdcGuardError(f"{path}: manifest version {m.version}, expected {MANIFEST_VERSION}")
    return m
