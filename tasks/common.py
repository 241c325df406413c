"""Small helpers shared by tasks: devices, fingerprints, progress, data paths."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

import udcguard
from udcguard.config import Params
from udcguard.errors import UdcGuardError
from udcguard.io.atomic import sha256_file

#: A folder holding this file is hashed by it alone: udcguard's manifests (data/udc/<split>,
#: input sets written by save_inputs) carry the sha256 of each of the folder's data files.
MANIFEST = "manifest.json"


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from udcguard.errors import ConfigError

        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto')")
    return torch.device(name)


def fingerprint(params: Params, *sections: str, extra: str = "", upstream: Iterable[str | Path] = ()) -> str:
    """Hash of params sections, udcguard's source and the content of the ``upstream`` DVC outputs a stage
    reads: a staging dir or checkpoint is reused only if equal."""
    h = hashlib.sha256(extra.encode())
    for s in sections:
        value = getattr(params, s)
        h.update(value.model_dump_json().encode() if hasattr(value, "model_dump_json") else repr(value).encode())
    for f in sorted(Path(udcguard.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    h.update(upstream_digest(*upstream).encode())
    return h.hexdigest()


def upstream_digest(*paths: str | Path) -> str:
    """sha256 over the files of each path (names relative to it and their sha256, sorted; hidden entries
    skipped; a folder holding a manifest.json by that file alone); a missing path hashes as missing."""
    h = hashlib.sha256()
    for i, root in enumerate(map(Path, paths)):
        files = _content_files(root)
        h.update(f"{i}:{'missing' if not root.exists() else len(files)}\0".encode())
        for f in files:
            h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\0".encode())
    return h.hexdigest()


def _content_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    if (path / MANIFEST).is_file():
        return [path / MANIFEST]
    return [f for c in sorted(path.iterdir()) if not c.name.startswith(".") for f in _content_files(c)]


def upstream(paths: Paths, stage: str, restorer: str = "") -> list[Path]:
    """The DVC outputs a resumable stage reads (its data deps in dvc.yaml; a test says so)."""
    models, udc, psf, purifier = paths.data / "models", paths.udc, paths.psf, paths.purifier
    return {
        "train_restorer": [udc, psf],
        "train_purifier": [udc],
        "purify_train": [udc, purifier],
        "attack": [models, udc, psf],  # all restorers: the transfer attack crafts on another one
        "purify": [paths.attacks(restorer), purifier, paths.tstar],
        "finetune": [paths.model(restorer), paths.purified_train, udc, psf],
        "adaptive": [paths.model(restorer), paths.finetuned(restorer), purifier, paths.tstar, udc, psf],
    }[stage]


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
