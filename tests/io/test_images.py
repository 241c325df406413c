"""read_image: round trips for every supported kind, one-line errors for every bad kind."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from PIL import Image as PILImage

from udcguard.errors import ImageError
from udcguard.io.images import Image, read_image


def _rgb8(h: int = 12, w: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_exr(path: Path, channels: dict[str, np.ndarray]) -> None:
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, channels).write(str(path))


def _write_png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one, but reads it as 'RGB')."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- good inputs
@pytest.mark.parametrize("ext", ["png", "tif"])
def test_8bit_rgb_round_trip(tmp_path: Path, ext: str) -> None:
    rgb = _rgb8()
    path = tmp_path / f"a.{ext}"
    PILImage.fromarray(rgb).save(path)
    img = read_image(path)
    assert isinstance(img, Image)
    assert img.linear is False and img.source == str(path)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (12, 17, 3)
    np.testing.assert_array_equal(img.pixels, rgb.astype(np.float32) / 255.0)


def test_jpeg_reads_close_to_original(tmp_path: Path) -> None:
    rgb = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    path = tmp_path / "a.JPG"  # upper-case extension accepted
    PILImage.fromarray(rgb).save(path, quality=95)
    img = read_image(path)
    assert np.abs(img.pixels * 255 - rgb).max() < 4


def test_palette_without_transparency_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    PILImage.fromarray(_rgb8()).convert("P").save(path)
    img = read_image(path)
    assert img.pixels.shape == (12, 17, 3)


def test_npy_round_trip(tmp_path: Path) -> None:
    hdr = np.random.default_rng(1).uniform(0, 3000, size=(9, 11, 3))
    path = tmp_path / "s.npy"
    np.save(path, hdr)
    img = read_image(path)
    assert img.linear is True and img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels, hdr, rtol=1e-6)


@pytest.mark.parametrize("layout", ["rgb", "rgba", "separate"])
def test_exr_round_trip(tmp_path: Path, layout: str) -> None:
    hdr = np.random.default_rng(2).uniform(0, 500, size=(7, 13, 3)).astype(np.float32)
    path = tmp_path / "s.exr"
    if layout == "rgb":
        _write_exr(path, {"RGB": hdr})
    elif layout == "rgba":
        _write_exr(path, {"RGBA": np.concatenate([hdr, np.ones_like(hdr[..., :1])], axis=-1)})
    else:
        _write_exr(path, {"R": hdr[..., 0].copy(), "G": hdr[..., 1].copy(), "B": hdr[..., 2].copy()})
    img = read_image(path)
    assert img.linear is True and img.pixels.shape == (7, 13, 3)
    np.testing.assert_array_equal(img.pixels, hdr)


def test_tiny_negative_hdr_values_are_clamped(tmp_path: Path) -> None:
    hdr = np.ones((4, 4, 3), np.float32)
    hdr[0, 0, 0] = -0.003  # as in the Blender panoramas
    path = tmp_path / "s.npy"
    np.save(path, hdr)
    assert read_image(path).pixels.min() == 0.0


# --------------------------------------------------------------------------- bad inputs
def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a word the reason must contain)."""
    out: dict[str, tuple[Path, str]] = {}
    out["missing"] = (tmp / "nope.png", "not found")
    p = tmp / "corrupt.png"
    p.write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    out["corrupt"] = (p, "corrupt")
    p = tmp / "trunc.jpg"
    PILImage.fromarray(_rgb8(64, 64)).save(tmp / "full.jpg", quality=95)
    p.write_bytes((tmp / "full.jpg").read_bytes()[:900])
    out["truncated"] = (p, "truncated")
    p = tmp / "grey.png"
    PILImage.fromarray(_rgb8()[..., 0]).save(p)
    out["grey"] = (p, "greyscale")
    p = tmp / "rgba.png"
    PILImage.fromarray(np.dstack([_rgb8(), _rgb8()[..., :1]])).save(p)
    out["rgba"] = (p, "RGBA")
    p = tmp / "grey16.png"
    PILImage.fromarray((np.arange(12 * 17).reshape(12, 17) * 300).astype(np.uint16)).save(p)
    out["grey16"] = (p, "16-bit")
    p = tmp / "rgb16.png"
    _write_png16_rgb(p, (np.arange(6 * 7 * 3).reshape(6, 7, 3) * 1000).astype(np.uint16))
    out["rgb16"] = (p, "16-bit")
    p = tmp / "pal.png"
    PILImage.fromarray(_rgb8()).convert("P").save(p, transparency=0)
    out["palette_alpha"] = (p, "transparency")
    p = tmp / "shape.npy"
    np.save(p, np.ones((8, 8), np.float32))
    out["npy_shape"] = (p, "shape")
    p = tmp / "dtype.npy"
    np.save(p, np.ones((8, 8, 3), np.int64))
    out["npy_dtype"] = (p, "dtype")
    p = tmp / "nan.npy"
    a = np.ones((8, 8, 3), np.float32)
    a[1, 2, 0] = np.nan
    np.save(p, a)
    out["npy_nan"] = (p, "NaN")
    p = tmp / "neg.npy"
    np.save(p, np.full((8, 8, 3), -0.5, np.float32))
    out["npy_negative"] = (p, "negative")
    p = tmp / "inf.exr"
    b = np.ones((4, 4, 3), np.float32)
    b[0, 0, 1] = np.inf
    _write_exr(p, {"RGB": b})
    out["exr_inf"] = (p, "NaN/inf")
    p = tmp / "grey.exr"
    _write_exr(p, {"Y": np.ones((4, 4), np.float32)})
    out["exr_grey"] = (p, "greyscale")
    p = tmp / "junk.exr"
    p.write_bytes(b"not an exr" * 50)
    out["exr_corrupt"] = (p, "cannot decode")
    p = tmp / "a.gif"
    PILImage.fromarray(_rgb8()).save(p)
    out["unknown_ext"] = (p, "unsupported extension")
    return out


BAD = [
    "missing", "corrupt", "truncated", "grey", "rgba", "grey16", "rgb16", "palette_alpha",
    "npy_shape", "npy_dtype", "npy_nan", "npy_negative", "exr_inf", "exr_grey", "exr_corrupt",
    "unknown_ext",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path, word = _bad_files(tmp_path)[case]
    with pytest.raises(ImageError) as err:
        read_image(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    assert word.lower() in msg.lower()


def test_too_small_for_min_size(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    PILImage.fromarray(_rgb8(40, 90)).save(path)
    assert read_image(path, min_size=40).pixels.shape == (40, 90, 3)
    with pytest.raises(ImageError) as err:
        read_image(path, min_size=64)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "90x40" in msg and "64" in msg
