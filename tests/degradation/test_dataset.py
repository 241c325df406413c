"""Config-driven scene catalogue: which sources the params enable, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from udcguard.config import SceneParams
from udcguard.degradation.dataset import build_scene_sources
from udcguard.errors import ImageError


def _walls(root: Path) -> Path:
    (root / "mate" / "nature").mkdir(parents=True)
    PILImage.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "mate" / "nature" / "Dune.jpg")
    return root


def test_wallpapers_auto_required_off(tmp_path: Path) -> None:
    root = _walls(tmp_path / "bg")
    base = dict(photos=False, panoramas="off", wallpaper_dir=root)
    for mode in ("auto", "required"):
        sources = build_scene_sources(SceneParams(**base, wallpapers=mode))
        assert list(sources) == ["wall:Dune"] and sources["wall:Dune"].group == "wall:Dune"
    assert build_scene_sources(SceneParams(**{**base, "photos": True}, wallpapers="off")).keys().isdisjoint(
        {"wall:Dune"})


def test_missing_wallpapers(tmp_path: Path) -> None:
    base = dict(photos=True, panoramas="off", wallpaper_dir=tmp_path / "none")
    sources = build_scene_sources(SceneParams(**base, wallpapers="auto"))
    assert sources and not any(n.startswith("wall:") for n in sources)
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'none'}: no wallpaper photographs "
                                         r"\(scenes\.wallpapers is 'required'; install Debian's mate-backgrounds"):
        build_scene_sources(SceneParams(**base, wallpapers="required"))


def test_only_wallpapers_is_a_source() -> None:
    SceneParams(photos=False, panoramas="off", wallpapers="auto")
    with pytest.raises(ValueError, match="no scene source: enable photos, wallpapers, panoramas"):
        SceneParams(photos=False, panoramas="off", wallpapers="off")
