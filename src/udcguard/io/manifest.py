"""The dataset manifest: one JSON per split listing every pair (data contract).

``data/udc/<split>/manifest.json``::

    {"version": 1, "split": "train", "seed": 0, "dtype": "float32", "crop_px": 64,
     "pairs": [{"id": "train-00000", "gt": "gt/train-00000.npy", "lq": "lq/train-00000.npy",
                "scene": "photo:astronaut", "psf": "toled", "crop": [y, x, h, w],
                "seed": [...], "sha256": {"gt": "...", "lq": "..."}, ...}, ...]}

Paths inside are relative to the split directory. Later stages read it with
:func:`load_manifest`, which checks the structure and names the file on error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from udcguard.errors import UdcGuardError
from udcguard.io.atomic import read_json

MANIFEST_VERSION = 1


class PairRecord(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    gt: str
    lq: str
    scene: str
    psf: str
    crop: tuple[int, int, int, int]
    seed: tuple[int, ...]
    sha256: dict[str, str]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    version: int
    split: str
    seed: int
    dtype: str
    crop_px: int
    pairs: tuple[PairRecord, ...]


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; errors name the file."""
    path = Path(path)
    data: Any = read_json(path, "manifest", hint=" (run the synthesize stage)")
    try:
        m = Manifest.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        raise UdcGuardError(f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    if m.version != MANIFEST_VERSION:
        raise UdcGuardError(f"{path}: manifest version {m.version}, expected {MANIFEST_VERSION}")
    return m
