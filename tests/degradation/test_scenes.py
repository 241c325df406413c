"""Scene sources (packaged photos, wallpapers, panoramas, folders), scene preparation and splits."""

from __future__ import annotations

import json
import pickle
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from udcguard.degradation.hdr import luminance
from udcguard.degradation.scenes import panorama_views, prepare_scene, split_scenes
from udcguard.errors import ImageError
from udcguard.io.images import Image
from udcguard.io.sources import _WALLPAPERS, SceneSource, folder_scenes, packaged_photos, panoramas, wallpapers

BLENDER_WORLDS = Path("/usr/share/blender/datafiles/studiolights/world")
BACKGROUNDS = Path("/usr/share/backgrounds")
HIGHLIGHTS = {"threshold": 0.8, "alpha_min": 10.0, "alpha_max": 500.0}
LIGHTS = {"max_count": 4, "radius_px": (1.0, 6.0), "intensity": (10.0, 500.0)}


# --------------------------------------------------------------------------- sources
def test_packaged_photos_load_offline_from_site_packages() -> None:
    sources = packaged_photos()
    names = [s.name for s in sources]
    assert len(sources) >= 8
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {"photo:astronaut", "photo:china", "photo:grace_hopper"} <= set(names)
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for s in sources:
        assert s.kind == "photo"
        img = s.load()
        assert not img.linear and img.pixels.ndim == 3 and img.pixels.shape[2] == 3
        assert min(img.pixels.shape[:2]) >= 256
        assert 0 <= img.pixels.min() and img.pixels.max() <= 1
        assert img.pixels.std(axis=-1).mean() > 0.01  # colour, not grey stored as RGB
        assert Path(img.source).resolve().is_relative_to(site), img.source
    assert pickle.loads(pickle.dumps(sources[0])).load().pixels.shape == sources[0].load().pixels.shape


def test_scene_groups_default_to_the_name_and_join_stereo_pairs() -> None:
    groups = {s.name: s.group for s in packaged_photos()}
    assert groups["photo:motorcycle_left"] == groups["photo:motorcycle_right"] == "photo:motorcycle"
    assert groups["photo:astronaut"] == "photo:astronaut"
    assert SceneSource("x", "folder", lambda: None).group == "x"
    assert SceneSource("x", "folder", lambda: None, "g").group == "g"


def test_wallpapers_list_only_existing_files(tmp_path: Path) -> None:
    assert wallpapers(tmp_path / "nope") == []
    for stem in ("Storm", "Aqua"):
        rel = dict(_WALLPAPERS)[stem]
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / rel)
    (tmp_path / "mate" / "nature" / "Unlisted.jpg").write_bytes(b"")  # not curated: ignored
    sources = wallpapers(tmp_path)
    assert [s.name for s in sources] == ["wall:Aqua", "wall:Storm"]
    assert all(s.kind == "wallpaper" and s.group == s.name for s in sources)
    assert sources[1].load().source == str(tmp_path / "mate/nature/Storm.jpg")


@pytest.mark.skipif(not (BACKGROUNDS / "mate").is_dir(), reason="mate-backgrounds not installed")
def test_installed_wallpapers_are_colour_photographs() -> None:
    sources = wallpapers(BACKGROUNDS)
    assert len(sources) == len(_WALLPAPERS) == 12
    for s in sources:
        img = s.load()
        assert not img.linear and min(img.pixels.shape[:2]) >= 1000
        assert img.pixels.std(axis=-1).mean() > 0.01 and img.pixels.std() > 0.05


@pytest.mark.skipif(not BLENDER_WORLDS.is_dir(), reason="blender-data panoramas not installed")
def test_blender_panoramas_are_linear_hdr() -> None:
    sources = panoramas(BLENDER_WORLDS)
    assert [s.name for s in sources] == [
        "pano:city", "pano:courtyard", "pano:forest", "pano:interior",
        "pano:night", "pano:studio", "pano:sunrise", "pano:sunset",
    ]  # fmt: skip
    for s in sources:
        img = s.load()
        assert s.kind == "panorama" and img.linear
        assert img.pixels.shape == (512, 1024, 3) and img.pixels.dtype == np.float32
        assert img.pixels.max() > 1 and img.pixels.min() >= 0


def test_panoramas_missing_directory_is_empty(tmp_path: Path) -> None:
    assert panoramas(tmp_path / "nope") == []


def test_folder_scenes(tmp_path: Path) -> None:
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
    np.save(tmp_path / "a.npy", np.ones((8, 8, 3), np.float32))
    (tmp_path / "notes.txt").write_text("not a scene")
    sources = folder_scenes(tmp_path)
    assert [s.name for s in sources] == ["folder:a.npy", "folder:b.png"]
    assert sources[0].load().linear and not sources[1].load().linear
    assert sources[0] == SceneSource("folder:a.npy", "folder", lambda: None)  # equality by name/kind


def test_folder_scenes_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'nope'}: .*not found"):
        folder_scenes(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match=rf"^{tmp_path}: no scene files"):
        folder_scenes(tmp_path)


# --------------------------------------------------------------------------- prepare_scene
def _photo() -> Image:
    rng = np.random.default_rng(0)
    px = rng.uniform(0, 1, size=(120, 200, 3)).astype(np.float32)
    px[:10, :10] = 1.0  # a saturated patch
    return Image(pixels=px, linear=False, source="synthetic.png")


def test_prepare_ldr_photo_becomes_hdr_with_lights() -> None:
    hdr, info = prepare_scene(
        _photo(), np.random.default_rng(1), max_side_px=100, highlights=HIGHLIGHTS, lights=LIGHTS
    )
    assert hdr.dtype == np.float32 and hdr.shape == (60, 100, 3)
    assert hdr.min() >= 0 and np.isfinite(hdr).all()
    assert hdr.max() > 10  # lights (>= 10) and boosted highlights
    assert 10 <= info["alpha"] <= 500 and info["kind"] == "ldr"
    assert 1 <= len(info["lights"]) <= 4
    assert info["input_shape"] == [120, 200] and info["shape"] == [60, 100]
    json.dumps(info)  # JSON-serialisable
    # the saturated patch (linear 1 after the area downscale) gains 1 + alpha
    np.testing.assert_allclose(hdr[1, 1].min(), 1 + info["alpha"], rtol=1e-4)


def test_prepare_real_photo_is_deterministic() -> None:
    img = packaged_photos()[0].load()
    a, ia = prepare_scene(img, np.random.default_rng(5), max_side_px=128, highlights=HIGHLIGHTS, lights=LIGHTS)
    b, ib = prepare_scene(img, np.random.default_rng(5), max_side_px=128, highlights=HIGHLIGHTS, lights=LIGHTS)
    np.testing.assert_array_equal(a, b)
    assert ia == ib and max(a.shape[:2]) == 128 and a.max() > 1


def test_prepare_hdr_scene_is_exposed() -> None:
    px = np.random.default_rng(2).lognormal(3, 2, size=(80, 80, 3)).astype(np.float32)
    img = Image(pixels=px, linear=True, source="x.npy")
    hdr, info = prepare_scene(img, np.random.default_rng(3), max_side_px=64, exposure_median=0.18, lights=None)
    assert hdr.shape == (64, 64, 3) and info["kind"] == "hdr" and info["lights"] == []
    assert info["alpha"] is None and info["exposure_scale"] > 0
    np.testing.assert_allclose(np.median(luminance(hdr)), 0.18, rtol=1e-3)


def test_panorama_views_deterministic_and_in_range() -> None:
    pano = Image(
        pixels=np.random.default_rng(4).uniform(0, 5, size=(64, 128, 3)).astype(np.float32),
        linear=True,
        source="p.exr",
    )
    a = panorama_views(pano, np.random.default_rng(9), count=6, fov_deg=75, size=16)
    b = panorama_views(pano, np.random.default_rng(9), count=6, fov_deg=75, size=16)
    assert len(a) == 6
    for (ya, pa, va), (yb, pb, vb) in zip(a, b, strict=True):
        assert ya == yb and pa == pb
        np.testing.assert_array_equal(va, vb)
        assert -180 <= ya < 180 and -15 <= pa <= 25 and va.shape == (16, 16, 3)
    yaws = sorted(y for y, _, _ in a)
    gaps = np.diff(yaws + [yaws[0] + 360])
    assert gaps.min() >= 30 - 1e-9  # spacing 60, jitter at most 15 each


# --------------------------------------------------------------------------- splits
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.mark.parametrize("seed", range(25))
def test_split_scenes_never_splits_a_group(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"s{i:02d}" for i in range(int(rng.integers(6, 30)))]
    groups = {n: f"g{int(rng.integers(0, len(names) // 2 + 1))}" for n in names}
    n_groups = len(set(groups.values()))
    if n_groups < 3:
        pytest.skip("too few groups drawn")
    splits = split_scenes(names, FRACTIONS, seed=seed, groups=groups)
    assert sorted(s for part in splits.values() for s in part) == names
    owner = {}
    for split, part in splits.items():
        for n in part:
            assert owner.setdefault(groups[n], split) == split, f"group {groups[n]} in {owner[groups[n]]} and {split}"
    counts = [len({groups[n] for n in splits[k]}) for k in FRACTIONS]
    assert sum(counts) == n_groups and min(counts) >= 1  # fractions count groups


def test_split_scenes_counts_groups_and_keeps_ungrouped_names() -> None:
    names = [f"s{i:03d}" for i in range(20)]
    pairs = {n: f"pair{i // 2}" for i, n in enumerate(names)}  # 10 groups of two
    splits = split_scenes(names, FRACTIONS, seed=1, groups=pairs)
    assert [len(splits[k]) for k in FRACTIONS] == [14, 4, 2]  # 7 / 1.5 / 1.5 groups -> 7, 2, 1
    assert split_scenes(names, FRACTIONS, seed=1, groups={}) == split_scenes(names, FRACTIONS, seed=1)
    with pytest.raises(ValueError, match=r"found 2 scene group\(s\) in 4 scene\(s\); at least 3"):
        split_scenes(names[:4], FRACTIONS, seed=0, groups=pairs)


@pytest.mark.parametrize("n", [3, 4, 7, 10, 18, 100])
def test_split_scenes_disjoint_covering_nonempty(n: int) -> None:
    names = [f"scene{i:03d}" for i in range(n)]
    splits = split_scenes(names, FRACTIONS, seed=0)
    assert list(splits) == ["train", "val", "test"]
    flat = [s for part in splits.values() for s in part]
    assert sorted(flat) == names  # covering and disjoint
    assert all(len(part) >= 1 for part in splits.values())
    if n == 100:
        assert [len(splits[k]) for k in FRACTIONS] == [70, 15, 15]


def test_split_scenes_deterministic_and_order_independent() -> None:
    names = [f"s{i}" for i in range(20)]
    a = split_scenes(names, FRACTIONS, seed=3)
    assert split_scenes(list(reversed(names)), FRACTIONS, seed=3) == a
    assert split_scenes(names, FRACTIONS, seed=3) == a
    assert any(split_scenes(names, FRACTIONS, seed=s) != a for s in range(4, 8))


def test_split_scenes_needs_three_scenes() -> None:
    with pytest.raises(ValueError, match=r"found 2 scene group\(s\) in 2 scene\(s\); at least 3"):
        split_scenes(["a", "b"], FRACTIONS, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        split_scenes(["a", "b", "a"], FRACTIONS, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        split_scenes(["a", "b", "c"], {"train": 0.5, "val": 0.1, "test": 0.1}, seed=0)
