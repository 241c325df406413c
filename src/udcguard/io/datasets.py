"""Training/evaluation tensors from dataset splits and derived input sets.

A split (``data/udc/<split>/``, see :mod:`udcguard.io.manifest`) holds linear HDR pairs;
:func:`load_split` returns them as network tensors: tone-mapped with
:func:`udcguard.degradation.tonemap.tonemap` (the one HDR -> [0, 1] map), NCHW float32.

Derived input sets (adversarial or purified inputs, already tone-mapped) are directories
with ``inputs.npy`` (N, 3, H, W) float32 and ``manifest.json`` ``{ids, sha256, shape,
...extra}``: :func:`save_inputs` / :func:`load_inputs`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udcguard.degradation.tonemap import tonemap
from udcguard.errors import UdcGuardError
from udcguard.io.atomic import read_json, save_json, save_npy
from udcguard.io.manifest import load_manifest

INPUTS_FILE = "inputs.npy"
INPUTS_MANIFEST = "manifest.json"
_RESERVED = frozenset({"ids", "sha256", "shape", "version"})


@dataclass(frozen=True, eq=False)
class TensorPairs:
    """Paired network tensors.

    Shape:
        lq: (N, 3, H, W) float32 in [0, 1] (degraded input, tone-mapped).
        gt: (N, 3, H, W) float32 in [0, 1] (ground truth, tone-mapped).
        cond: (N, d) float32 PSF kernel codes, or None.
        ids: N pair ids.
        groups: N scene groups (from the manifest, see :mod:`udcguard.io.manifest`), for
            subsets stratified across groups; () (the default) makes each pair its own group.
    """

    lq: torch.Tensor
    gt: torch.Tensor
    cond: torch.Tensor | None
    ids: tuple[str, ...]
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.lq.ndim != 4 or self.lq.shape[1] != 3 or self.lq.shape != self.gt.shape:
            raise ValueError(f"lq {tuple(self.lq.shape)} and gt {tuple(self.gt.shape)}: expected equal (N, 3, H, W)")
        n = self.lq.shape[0]
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} pairs")
        if not self.groups:
            object.__setattr__(self, "groups", tuple(self.ids))
        elif len(self.groups) != n:
            raise ValueError(f"{len(self.groups)} groups for {n} pairs")
        if self.cond is not None and (self.cond.ndim != 2 or self.cond.shape[0] != n):
            raise ValueError(f"cond {tuple(self.cond.shape)}: expected ({n}, d)")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorPairs:
        """The pairs at ``indices`` (in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        cond = None if self.cond is None else self.cond[idx]
        keep = idx.tolist()
        return TensorPairs(lq=self.lq[idx], gt=self.gt[idx], cond=cond, ids=tuple(self.ids[i] for i in keep),
                           groups=tuple(self.groups[i] for i in keep))

    def concat(self, other: TensorPairs) -> TensorPairs:
        """``self`` followed by ``other`` (e.g. clean pairs + purified inputs with their gt)."""
        if (self.cond is None) != (other.cond is None):
            raise ValueError("cannot concatenate pairs with and without cond")
        if self.lq.shape[1:] != other.lq.shape[1:]:
            raise ValueError(f"image shapes differ: {tuple(self.lq.shape[1:])} vs {tuple(other.lq.shape[1:])}")
        cond = None if self.cond is None or other.cond is None else torch.cat([self.cond, other.cond])
        return TensorPairs(lq=torch.cat([self.lq, other.lq]), gt=torch.cat([self.gt, other.gt]),
                           cond=cond, ids=self.ids + other.ids, groups=self.groups + other.groups)


def load_split(
    split_dir: str | Path,
    *,
    psf_dir: str | Path | None = None,
    max_items: int | None = None,
    verify: bool = True,
) -> TensorPairs:
    """Load a split's pairs as tone-mapped NCHW tensors.

    Args:
        split_dir: directory holding ``manifest.json`` (paths inside are relative to it).
        psf_dir: directory with ``codes.json`` (``names``) and ``codes.npy`` (one row per
            name); when given, each pair's ``psf`` code becomes its ``cond`` row.
        max_items: keep only the first ``max_items`` pairs of the manifest (None: all).
        verify: check each file's sha256 against the manifest.

    Returns:
        :class:`TensorPairs` with lq, gt (N, 3, H, W) in [0, 1), cond (N, d) or None, and
        each pair's scene group.
    """
    split_dir = Path(split_dir)
    manifest_path = split_dir / "manifest.json"
    manifest = load_manifest(manifest_path)
    pairs = manifest.pairs if max_items is None else manifest.pairs[:max_items]
    if not pairs:
        raise UdcGuardError(f"{manifest_path}: no pairs")
    codes = None if psf_dir is None else load_psf_codes(psf_dir)
    lq, gt, cond = [], [], []
    shape: tuple[int, ...] | None = None
    for rec in pairs:
        for kind, out in (("gt", gt), ("lq", lq)):
            path = split_dir / getattr(rec, kind)
            if verify and kind not in rec.sha256:
                raise UdcGuardError(f"{manifest_path}: pair {rec.id}: no sha256 for {kind!r}")
            arr = _read_hdr(path, rec.sha256[kind] if verify else None)
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise UdcGuardError(f"{path}: shape {arr.shape}, other pairs are {shape}")
            out.append(arr)
        if codes is not None:
            if rec.psf not in codes:
                raise UdcGuardError(
                    f"{manifest_path}: pair {rec.id}: unknown PSF {rec.psf!r}; "
                    f"the PSF codes have {', '.join(sorted(codes))}"
                )
            cond.append(codes[rec.psf])

    def to_tensor(arrs: list[np.ndarray]) -> torch.Tensor:
        hwc = np.stack(arrs)  # (N, H, W, 3)
        return torch.from_numpy(tonemap(hwc).astype(np.float32, copy=False)).permute(0, 3, 1, 2).contiguous()

    return TensorPairs(
        lq=to_tensor(lq),
        gt=to_tensor(gt),
        cond=torch.from_numpy(np.stack(cond)) if codes is not None else None,
        ids=tuple(rec.id for rec in pairs),
        groups=tuple(rec.group for rec in pairs),
    )


def load_psf_codes(psf_dir: str | Path) -> dict[str, np.ndarray]:
    """``{psf name: (d,) float32 kernel code}`` from ``codes.json`` + ``codes.npy``."""
    psf_dir = Path(psf_dir)
    names_path, codes_path = psf_dir / "codes.json", psf_dir / "codes.npy"
    try:
        names = json.loads(names_path.read_text())["names"]
    except FileNotFoundError:
        raise UdcGuardError(f"{names_path}: PSF code names not found (run the synthesize stage)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UdcGuardError(f"{names_path}: unreadable PSF code names ({err!r})") from None
    codes = _read_array(codes_path, None)
    if codes.ndim != 2 or codes.shape[0] != len(names):
        raise UdcGuardError(f"{codes_path}: shape {codes.shape}, expected ({len(names)}, d) for {names_path}")
    return {str(n): codes[i].astype(np.float32) for i, n in enumerate(names)}


def save_inputs(dir: str | Path, lq: torch.Tensor, ids: Sequence[str], extra: dict[str, Any] | None = None) -> Path:
    """Write a derived input set: ``dir/inputs.npy`` + ``dir/manifest.json``, atomically.

    Both files are written into a temporary sibling directory that is then renamed to
    ``dir`` (an existing ``dir`` is replaced), so ``dir`` is either complete or absent.

    Args:
        lq: (N, 3, H, W) tone-mapped inputs in [0, 1].
        ids: N pair ids (the split ids the inputs derive from).
        extra: JSON-serialisable metadata (attack, eps, seeds, ...); keys ``ids``,
            ``sha256``, ``shape``, ``version`` are reserved.
    """
    dir = Path(dir)
    if lq.ndim != 4 or lq.shape[1] != 3:
        raise ValueError(f"lq {tuple(lq.shape)}: expected (N, 3, H, W)")
    if len(ids) != lq.shape[0]:
        raise ValueError(f"{len(ids)} ids for {lq.shape[0]} inputs")
    extra = dict(extra or {})
    clash = sorted(_RESERVED & set(extra))
    if clash:
        raise ValueError(f"extra keys {clash} are reserved")
    arr = lq.detach().to("cpu", torch.float32).contiguous().numpy()
    dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dir.name}.", suffix=".tmp", dir=dir.parent))
    try:
        sha = save_npy(tmp / INPUTS_FILE, arr)
        save_json(tmp / INPUTS_MANIFEST, {"version": 1, "ids": list(ids), "sha256": sha,
                                          "shape": list(arr.shape), **extra})
        if dir.exists():
            shutil.rmtree(dir) if dir.is_dir() else dir.unlink()
        os.replace(tmp, dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dir


def load_inputs(dir: str | Path, *, verify: bool = True) -> tuple[torch.Tensor, tuple[str, ...], dict[str, Any]]:
    """Read a set written by :func:`save_inputs`: ``(lq (N, 3, H, W), ids, extra)``."""
    dir = Path(dir)
    mpath, ipath = dir / INPUTS_MANIFEST, dir / INPUTS_FILE
    meta = read_json(mpath, "input-set manifest")
    if not isinstance(meta, dict) or not _RESERVED <= set(meta):
        raise UdcGuardError(f"{mpath}: expected a JSON object with keys {sorted(_RESERVED)}")
    arr = _read_array(ipath, meta["sha256"] if verify else None)
    ids = tuple(str(i) for i in meta["ids"])
    if arr.ndim != 4 or arr.shape[1] != 3 or list(arr.shape) != list(meta["shape"]) or arr.shape[0] != len(ids):
        raise UdcGuardError(f"{ipath}: shape {arr.shape}, manifest says {meta['shape']} for {len(ids)} ids")
    extra = {k: v for k, v in meta.items() if k not in _RESERVED}
    return torch.from_numpy(arr.astype(np.float32, copy=False)), ids, extra


def _read_hdr(path: Path, sha256: str | None) -> np.ndarray:
    """A linear HDR (H, W, 3) float32 array with finite values >= 0."""
    arr = _read_array(path, sha256)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UdcGuardError(f"{path}: shape {arr.shape}, expected (H, W, 3)")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all() or arr.min() < 0:
        raise UdcGuardError(f"{path}: non-finite or negative radiance")
    return arr


def _read_array(path: Path, sha256: str | None) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UdcGuardError(f"{path}: file not found") from None
    except OSError as err:
        raise UdcGuardError(f"{path}: unreadable ({err})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise UdcGuardError(f"{path}: sha256 mismatch with the manifest (file changed or corrupt)")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UdcGuardError(f"{path}: not a valid .npy file ({err})") from None
