"""Image decoding: the only place in udcguard where image files are read.

Two kinds of image come out, both as (H, W, 3) float32 RGB:

* 8-bit RGB PNG / JPEG / TIFF (Pillow): sRGB-encoded values in [0, 1], ``linear=False``.
* ``.exr`` (the ``OpenEXR`` wheel) and ``.npy`` (float (H, W, 3)): linear HDR radiance,
  ``>= 0`` and finite, ``linear=True``.

Anything else (grey, alpha, 16-bit, palette with transparency, CMYK, corrupt or truncated
files, unknown extensions, NaN/inf or negative HDR values) raises :class:`ImageError` with
one line ``"<path>: <reason>"`` that says what was found and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from udcguard.errors import ImageError

LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
HDR_SUFFIXES = (".exr", ".npy")
SUPPORTED_SUFFIXES = LDR_SUFFIXES + HDR_SUFFIXES
# HDR files often hold tiny negative values from filtering or lossy compression (the
# Blender/HDRI Haven panoramas go down to about -0.004): values >= -NEGATIVE_TOLERANCE
# are clamped to 0, anything more negative is an error.
NEGATIVE_TOLERANCE = 0.01

_GREY_MODES = {"1", "L", "I", "F"}
_OTHER_COLOUR_MODES = {"CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class Image:
    """A decoded image.

    Attributes:
        pixels: (H, W, 3) float32 RGB; sRGB-encoded in [0, 1] when ``linear`` is False,
            linear radiance >= 0 (unbounded) when True.
        linear: True for HDR sources (.exr, .npy).
        source: where it came from (the file path).
    """

    pixels: np.ndarray
    linear: bool
    source: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _fail(path: object, reason: str) -> ImageError:
    return ImageError(f"{path}: {' '.join(reason.split())}")


def read_image(path: str | Path, *, min_size: int | None = None) -> Image:
    """Decode one image file.

    Args:
        path: a .png, .jpg/.jpeg, .tif/.tiff (8-bit RGB), .exr or .npy (linear HDR) file.
        min_size: if given, the smallest allowed min(H, W) in pixels (e.g. the crop size).

    Returns:
        :class:`Image` with (H, W, 3) float32 pixels.

    Raises:
        ImageError: one line starting with ``path``.
    """
    p = Path(path)
    if not p.exists():
        raise _fail(path, "file not found")
    if not p.is_file():
        raise _fail(path, "not a regular file")
    suffix = p.suffix.lower()
    if suffix in LDR_SUFFIXES:
        pixels, linear = _read_ldr(p, path), False
    elif suffix == ".exr":
        pixels, linear = _check_hdr(path, _read_exr(p, path)), True
    elif suffix == ".npy":
        pixels, linear = _check_hdr(path, _read_npy(p, path)), True
    else:
        raise _fail(
            path,
            f"unsupported extension {p.suffix or '(none)'!r}; use PNG, JPEG or TIFF (8-bit RGB) "
            "or linear HDR .exr/.npy",
        )
    h, w = pixels.shape[:2]
    if h == 0 or w == 0:
        raise _fail(path, f"empty image ({w}x{h} px)")
    if min_size is not None and min(h, w) < min_size:
        raise _fail(
            path,
            f"image is {w}x{h} px, smaller than the required {min_size} px crop; "
            f"use an image at least {min_size} px on each side",
        )
    return Image(pixels=np.ascontiguousarray(pixels, dtype=np.float32), linear=linear, source=str(path))


# --------------------------------------------------------------------------- 8-bit (Pillow)
def _rawmodes(im: PILImage.Image) -> list[str]:
    """Decoder raw modes of the tiles (Pillow reads 16-bit RGB as mode 'RGB', raw 'RGB;16B')."""
    out = []
    for tile in getattr(im, "tile", None) or []:
        args = getattr(tile, "args", None)
        if isinstance(args, str):
            out.append(args)
        elif isinstance(args, tuple) and args and isinstance(args[0], str):
            out.append(args[0])
    return out


def _mode_problem(im: PILImage.Image) -> str | None:
    """Why this Pillow image is not acceptable 8-bit RGB, or None."""
    mode = im.mode
    if mode.startswith("I;16") or any(";16" in r for r in _rawmodes(im)):
        return "16-bit image; save as 8-bit RGB or as linear .npy/.exr"
    if mode in ("RGBA", "RGBa"):
        return "RGBA image (alpha channel); save it as RGB"
    if mode in ("LA", "La"):
        return "greyscale image with alpha (mode LA); save it as RGB"
    if mode in _GREY_MODES:
        return f"greyscale image (mode {mode}); save it as 8-bit RGB"
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        return "palette image with transparency; save it as RGB without alpha"
    if mode in _OTHER_COLOUR_MODES:
        return f"{mode} image; convert it to 8-bit RGB"
    if mode not in ("RGB", "RGBX", "P"):
        return f"unsupported image mode {mode}; save it as 8-bit RGB"
    return None


def _read_ldr(p: Path, where: object) -> np.ndarray:
    """(H, W, 3) float32 sRGB values in [0, 1] from an 8-bit RGB file."""
    try:
        with PILImage.open(p) as im:
            problem = _mode_problem(im)
            if problem:
                raise _fail(where, problem)
            im.load()  # decode now: truncated/corrupt data fails here, not later
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except PILImage.DecompressionBombError:
        raise _fail(where, "image too large to decode safely; downscale it") from None
    except UnidentifiedImageError:
        raise _fail(where, "not a readable PNG/JPEG/TIFF image (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _fail(where, f"cannot decode image ({err}); the file is corrupt or truncated") from None
    return arr.astype(np.float32) / np.float32(255.0)


# --------------------------------------------------------------------------- HDR
def _read_exr(p: Path, where: object) -> np.ndarray:
    """(H, W, 3) float32 from the first part's RGB(A) channels of an OpenEXR file."""
    import OpenEXR

    try:
        channels = OpenEXR.File(str(p)).channels()
    except (RuntimeError, ValueError, OSError):  # the binding's text is multi-line
        raise _fail(where, "cannot decode OpenEXR file (corrupt, truncated or not EXR)") from None
    arr = None
    for key in ("RGB", "RGBA"):
        if key in channels:
            arr = channels[key].pixels
            break
    if arr is None:
        colour = [k for k, c in channels.items() if c.pixels.ndim == 3 and c.pixels.shape[-1] in (3, 4)]
        if len(colour) == 1:
            arr = channels[colour[0]].pixels
        else:
            found = ", ".join(sorted(channels)) or "none"
            if len(channels) == 1 and next(iter(channels.values())).pixels.ndim == 2:
                raise _fail(where, f"greyscale EXR (channel {found}); save R, G, B channels")
            raise _fail(where, f"no single RGB layer in EXR (channels: {found}); save R, G, B channels")
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise _fail(where, f"EXR channels are {arr.dtype}; expected half or float RGB")
    return arr[..., :3].astype(np.float32)


def _read_npy(p: Path, where: object) -> np.ndarray:
    """(H, W, 3) float array from a .npy file (no pickles)."""
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _fail(where, f"cannot read .npy ({err})") from None
    if not isinstance(arr, np.ndarray):
        raise _fail(where, "not a single .npy array (an .npz archive?); save one (H, W, 3) float array")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise _fail(where, f"array shape {arr.shape}; expected (H, W, 3) float linear HDR")
    if not np.issubdtype(arr.dtype, np.floating):
        raise _fail(where, f"array dtype {arr.dtype}; expected float (H, W, 3) linear HDR")
    return arr


def _check_hdr(where: object, arr: np.ndarray) -> np.ndarray:
    """Reject NaN/inf and clearly negative radiance; clamp tiny negatives to 0."""
    arr = np.asarray(arr, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise _fail(where, f"{bad} NaN/inf values; linear HDR data must be finite")
    if arr.size and float(arr.min()) < -NEGATIVE_TOLERANCE:
        raise _fail(where, f"negative values (min {float(arr.min()):.4g}); linear HDR data must be >= 0")
    return np.maximum(arr, np.float32(0.0))
