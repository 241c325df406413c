"""Scene discovery: photographs shipped in wheels or Debian wallpapers, HDR panoramas, folders.

Nothing here downloads anything. Each :class:`SceneSource` has a unique name and a lazy
loader (a picklable ``functools.partial`` of :func:`~udcguard.io.images.read_image`), so
listing scenes is cheap and decoding happens where the scene is used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from udcguard.errors import ImageError
from udcguard.io.images import SUPPORTED_SUFFIXES, Image, read_image

SceneKind = Literal["photo", "wallpaper", "panorama", "folder"]

# Real colour photographs inside wheels of this project's dependencies, decoded offline
# from the package directory itself (never from a pooch/download cache). Left out on
# purpose: skimage's synthetic or non-scene images (colorwheel 'color', logo, phantom,
# chessboards, microscopy 'ihc', fundus 'retina', grey images) and the screenshots, logos
# and test plots found in other packages.
#   (scene name, top-level package, path inside the package)
_PACKAGED_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png"),  # 512 x 512
    ("chelsea", "skimage", "data/chelsea.png"),  # 451 x 300
    ("coffee", "skimage", "data/coffee.png"),  # 600 x 400
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),  # 1000 x 872
    ("motorcycle_left", "skimage", "data/motorcycle_left.png"),  # 741 x 500
    ("motorcycle_right", "skimage", "data/motorcycle_right.png"),  # 741 x 500
    ("rocket", "skimage", "data/rocket.jpg"),  # 640 x 427
    ("china", "sklearn", "datasets/images/china.jpg"),  # 640 x 427
    ("flower", "sklearn", "datasets/images/flower.jpg"),  # 640 x 427
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),  # 512 x 600
)
# Scenes that show one place share a group (never split across train/val/test).
_PHOTO_GROUPS = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}  # a stereo pair

# The camera photographs among Debian's desktop wallpapers, relative to /usr/share/backgrounds
# (checked one by one; all twelve are distinct pictures, 1280 x 1024 to 2560 x 1920, each
# decoded and downscaled to 256 px in < 1 s). Left out on purpose: mate-backgrounds'
# abstract/ (Elephants* is a painting, in three sizes; the rest vector art) and desktop/
# (logos, stripes, blurred renders), and all twelve ukui-wallpapers (rendered or vector art).
#   (file stem, path)  -- package mate-backgrounds
_WALLPAPERS: tuple[tuple[str, str], ...] = (
    ("Aqua", "mate/nature/Aqua.jpg"),  # water drop
    ("Blinds", "mate/nature/Blinds.jpg"),  # backlit leaf
    ("Dune", "mate/nature/Dune.jpg"),  # grass, sea
    ("FreshFlower", "mate/nature/FreshFlower.jpg"),
    ("Garden", "mate/nature/Garden.jpg"),  # marigold
    ("GreenMeadow", "mate/nature/GreenMeadow.jpg"),
    ("LadyBird", "mate/nature/LadyBird.jpg"),
    ("RainDrops", "mate/nature/RainDrops.jpg"),
    ("Storm", "mate/nature/Storm.jpg"),  # clouds over a road
    ("TwoWings", "mate/nature/TwoWings.jpg"),  # dandelion seeds
    ("Wood", "mate/nature/Wood.jpg"),  # planks
    ("YellowFlower", "mate/nature/YellowFlower.jpg"),
)


@dataclass(frozen=True)
class SceneSource:
    """One scene that can be decoded on demand.

    Attributes:
        name: unique id, ``photo:<name>``, ``wall:<file stem>``, ``pano:<file stem>`` or
            ``folder:<file name>``.
        kind: "photo" / "wallpaper" (8-bit sRGB), "panorama" (equirectangular linear HDR)
            or "folder".
        loader: zero-argument callable returning the decoded :class:`Image`.
        group: scenes that show one place (a stereo pair) share a group, which splits keep
            whole; "" (the default) means the scene's own name.
    """

    name: str
    kind: SceneKind
    loader: Callable[[], Image] = field(compare=False, repr=False)
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.name)

    def load(self) -> Image:
        """Decode the scene (raises ImageError naming the file)."""
        return self.loader()


def _package_dir(package: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def packaged_photos() -> list[SceneSource]:
    """Photographs shipped inside installed packages (scikit-image, scikit-learn, matplotlib).

    Files that the installed versions do not ship are skipped. Every returned file lies
    inside its package directory, so loading needs no network and no cache.

    Returns:
        Sources of kind "photo" named ``photo:<name>``, sorted by name.
    """
    out = []
    for name, package, rel in _PACKAGED_PHOTOS:
        root = _package_dir(package)
        if root is None:
            continue
        path = (root / rel).resolve()
        if path.is_file() and path.is_relative_to(root):
            group = f"photo:{_PHOTO_GROUPS.get(name, name)}"
            out.append(SceneSource(f"photo:{name}", "photo", partial(read_image, path), group))
    return sorted(out, key=lambda s: s.name)


def wallpapers(root: str | Path = "/usr/share/backgrounds") -> list[SceneSource]:
    """The camera photographs among Debian's mate-backgrounds wallpapers (a curated list).

    Files missing under ``root`` (package not installed) are skipped; the caller decides
    whether an empty list is an error.

    Returns:
        Sources of kind "wallpaper" named ``wall:<file stem>``, sorted by name.
    """
    base = Path(root)
    out = [
        SceneSource(f"wall:{stem}", "wallpaper", partial(read_image, base / rel))
        for stem, rel in _WALLPAPERS
        if (base / rel).is_file()
    ]
    return sorted(out, key=lambda s: s.name)


def _files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        (p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes),
        key=lambda p: p.name,
    )


def panoramas(directory: str | Path) -> list[SceneSource]:
    """Equirectangular HDR panoramas: the ``*.exr`` files of ``directory``.

    The default directory holds Debian blender-data's eight CC0 HDRI Haven panoramas
    (1024 x 512). A missing directory gives an empty list; the caller decides whether that
    is an error.

    Returns:
        Sources of kind "panorama" named ``pano:<file stem>``, sorted by file name.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    files = _files(d, (".exr",))
    stems = [p.stem for p in files]
    out = []
    for p in files:
        label = p.stem if stems.count(p.stem) == 1 else p.name
        out.append(SceneSource(f"pano:{label}", "panorama", partial(read_image, p)))
    return sorted(out, key=lambda s: s.name)


def folder_scenes(directory: str | Path) -> list[SceneSource]:
    """A user's folder of scenes: PNG/JPEG/TIFF (8-bit RGB) and EXR/.npy (linear HDR).

    Not recursive. Files are only listed here; each is validated when loaded.

    Returns:
        Sources of kind "folder" named ``folder:<file name>``, sorted by file name.

    Raises:
        ImageError: the directory is missing or holds no file with a supported extension.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ImageError(f"{directory}: scene folder not found")
    files = _files(d, SUPPORTED_SUFFIXES)
    if not files:
        kinds = ", ".join(SUPPORTED_SUFFIXES)
        raise ImageError(f"{directory}: no scene files in folder (looked for {kinds})")
    return [SceneSource(f"folder:{p.name}", "folder", partial(read_image, p)) for p in files]
