"""The manifest contract: scene groups (new field, old manifests still load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from udcguard.errors import UdcGuardError
from udcguard.io.atomic import save_json
from udcguard.io.manifest import MANIFEST_VERSION, load_manifest


def _pair(i: int, scene: str, **extra: object) -> dict:
    return {"id": f"test-{i:05d}", "gt": f"gt/{i}.npy", "lq": f"lq/{i}.npy", "scene": scene, "psf": "toled",
            "crop": [0, 0, 8, 8], "seed": [1, i], "sha256": {"gt": "0", "lq": "1"}, **extra}


def _manifest(pairs: list[dict], **extra: object) -> dict:
    return {"version": MANIFEST_VERSION, "split": "test", "seed": 0, "dtype": "float32", "crop_px": 8,
            "pairs": pairs, **extra}


def test_group_round_trips(tmp_path: Path) -> None:
    pairs = [_pair(0, "photo:motorcycle_left", group="photo:motorcycle"),
             _pair(1, "photo:motorcycle_right", group="photo:motorcycle"), _pair(2, "wall:Dune", group="wall:Dune")]
    save_json(tmp_path / "manifest.json", _manifest(pairs, groups=["photo:motorcycle", "wall:Dune"]))
    m = load_manifest(tmp_path / "manifest.json")
    assert [p.group for p in m.pairs] == ["photo:motorcycle", "photo:motorcycle", "wall:Dune"]
    assert m.groups == ("photo:motorcycle", "wall:Dune")
    assert m.pairs[0].model_dump()["group"] == "photo:motorcycle"


def test_old_manifest_groups_fall_back_to_scenes(tmp_path: Path) -> None:
    save_json(tmp_path / "manifest.json", _manifest([_pair(0, "photo:b"), _pair(1, "photo:a"), _pair(2, "photo:b")]))
    m = load_manifest(tmp_path / "manifest.json")
    assert [p.group for p in m.pairs] == ["photo:b", "photo:a", "photo:b"]
    assert m.groups == ("photo:a", "photo:b")


def test_pair_group_missing_from_the_list_names_the_file(tmp_path: Path) -> None:
    save_json(tmp_path / "manifest.json", _manifest([_pair(0, "s", group="g")], groups=["h"]))
    with pytest.raises(UdcGuardError, match=r"manifest\.json: Value error, pair group\(s\) g not in the manifest's groups"):
        load_manifest(tmp_path / "manifest.json")
