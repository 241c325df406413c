"""Small helpers shared by tasks: devices, fingerprints, progress, data paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

import udcguard
from udcguard.config import Params
from udcguard.errors import UdcGuardError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from udcguard.errors import ConfigError

        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto')")
    return torch.device(name)


def fingerprint(params: Params, *sections: str, extra: str = "") -> str:
    """Hash of params sections and udcguard's source: a staging dir is reused only if equal."""
    h = hashlib.sha256(extra.encode())
    for s in sections:
        value = getattr(params, s)
        h.update(value.model_dump_json().encode() if hasattr(value, "model_dump_json") else repr(value).encode())
    for f in sorted(Path(udcguard.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def file_digest(path: str | Path | None) -> str:
    """sha256 of a file's bytes ("" for None): puts an input file's content into a fingerprint."""
    if path is None:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        raise UdcGuardError(f"{path}: cannot read ({err.strerror})") from None


def progress(total: int, desc: str) -> tqdm:
    """A progress bar on stderr (hidden when not a terminal)."""
    return tqdm(total=total, desc=desc, disable=None, dynamic_ncols=True)


class Paths:
    """Where each stage reads and writes (the DVC outs in dvc.yaml)."""

    def __init__(self, data_dir: str | Path = "data", reports_dir: str | Path = "reports") -> None:
        self.data = Path(data_dir)
        self.reports = Path(reports_dir)

    psf = property(lambda self: self.data / "psf")
    udc = property(lambda self: self.data / "udc")
    purifier = property(lambda self: self.data / "purifier")
    purified_train = property(lambda self: self.data / "purified_train")
    tstar = property(lambda self: self.data / "tstar.json")
    ckpt = property(lambda self: self.data / ".ckpt")

    def model(self, name: str) -> Path:
        return self.data / "models" / name

    def attacks(self, name: str) -> Path:
        return self.data / "attacks" / name

    def purified(self, name: str) -> Path:
        return self.data / "purified" / name

    def adaptive(self, name: str) -> Path:
        return self.data / "adaptive" / name

    def finetuned(self, name: str) -> Path:
        return self.data / "finetuned" / name
