"""Atomic writes and staged output directories.

Every file is written to a temporary name in its directory, flushed, fsync'ed and renamed
over the target, so a kill never leaves a half-written file under the final name. A stage
writes its outputs into a hidden staging directory (``.<name>.partial`` next to the final
directory) that survives a kill, so the stage resumes there; only a complete staging
directory is renamed to the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from udcguard.errors import UdcGuardError


def write_bytes(path: str | Path, data: bytes) -> str:
    """Atomically write ``data`` to ``path``; returns its sha256 hex digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def save_npy(path: str | Path, array: np.ndarray) -> str:
    """Atomically save an array as .npy (no pickle); returns the file's sha256."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def save_json(path: str | Path, obj: Any) -> str:
    """Atomically save JSON (sorted keys, stable formatting); returns its sha256."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_bytes(path, text.encode())


def save_png(path: str | Path, rgb: np.ndarray) -> str:
    """Atomically save a (H, W, 3) uint8 image as PNG; returns its sha256."""
    from PIL import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"expected (H, W, 3|4) uint8, got {rgb.shape} {rgb.dtype}")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")  # no timestamps: byte-stable
    return write_bytes(path, buf.getvalue())


def read_json(path: str | Path, what: str, *, hint: str = "") -> Any:
    """Parse a JSON file; a missing or unreadable file is a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UdcGuardError(f"{path}: {what} not found{hint}") from None
    except (OSError, ValueError) as err:
        raise UdcGuardError(f"{path}: unreadable {what} ({err})") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def staging_dir(final: str | Path) -> Path:
    final = Path(final)
    return final.parent / f".{final.name}.partial"


@contextmanager
def staged_output(final: str | Path, fingerprint: str) -> Iterator[Path]:
    """Yield a staging directory that becomes ``final`` when the block succeeds.

    ``fingerprint`` identifies the inputs (params, code version); a staging directory left
    by a killed run with the same fingerprint is reused (resume), one with another
    fingerprint is wiped. On a bad-input error (:class:`UdcGuardError`) the staging
    directory is removed; on any other exception or a kill it is kept for resuming.
    ``final`` is only replaced, never partially written.
    """
    final = Path(final)
    stage = staging_dir(final)
    stamp = stage / ".fingerprint"
    if stage.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    write_bytes(stamp, fingerprint.encode())
    try:
        yield stage
    except UdcGuardError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stamp.unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(stage, final)
