"""Small helpers shared by tasks: devices, fingerprints, progress, data paths."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

import torch
from tqdm.auto import tqdm

import udcguard
from udcguard.config import Params
from udcguard.errors import UdcGuardError
from udcguard.io.atomic import read_json, sha256_file

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
    for s in sections:  # "diffusion" or a dotted sub-key, "diffusion.max_timestep"
        value = params
        for part in s.split("."):
            value = getattr(value, part)
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


def file_digest(path: str | Path | None) -> str:
    """sha256 of a file's bytes ("" for None): puts an input file's content into a fingerprint."""
    if path is None:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        raise UdcGuardError(f"{path}: cannot read ({err.strerror})") from None


def progress(total: int, desc: str, unit: str = "", initial: int = 0,
             stream: TextIO | None = None) -> tqdm | LogProgress:
    """A tqdm bar on a terminal; otherwise (a log, ``dvc repro`` piped) plain lines every 10 % (at most one
    each 5 s) or 30 s, and a last one."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit or "it", initial=initial, dynamic_ncols=True, file=stream)
    return LogProgress(total, desc, unit, initial, stream)


def duration(s: float) -> str:
    """41 s, 2 min, 1.5 h."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


class LogProgress:
    """tqdm's update / set_postfix / close, as lines a log keeps:
    ``[train discnet] 250/1000 steps (25 %), 41 s elapsed, ~2 min left, loss=0.0123``."""

    def __init__(self, total: int, desc: str, unit: str = "", initial: int = 0, stream: TextIO | None = None,
                 every_s: float = 30.0, min_gap_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.stream, self.every_s, self.min_gap_s, self.clock = stream or sys.stderr, every_s, min_gap_s, clock
        self.start = self.last = clock()
        self.postfix, self.closed = "", False
        self.decile = self._decile()

    def _decile(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        gap = now - self.last
        if (self._decile() > self.decile and gap >= self.min_gap_s) or gap >= self.every_s:
            self.decile, self.last = self._decile(), now
            if self.n < self.total:
                self._line(now)

    def set_postfix(self, **kwargs: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(self.clock(), done=True)

    def _line(self, now: float, done: bool = False) -> None:
        elapsed, unit = now - self.start, f" {self.unit}" if self.unit else ""
        parts = [f"[{self.desc}] {'done ' if done else ''}{self.n}/{self.total}{unit}"
                 + (f" ({100 * self.n // self.total} %)" if self.total and not done else ""),
                 f"{duration(elapsed)} {'in all' if done else 'elapsed'}"]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if not done and rate > 0:
            parts.append(f"~{duration((self.total - self.n) / rate)} left")
        print(", ".join(parts + ([self.postfix] if self.postfix else [])), file=self.stream, flush=True)


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


#: the defended systems of the adaptive stage (gray-box attacks see the restorer only)
DEFENDED = ("purify", "purify+finetune")


def draw_dir(set_name: str, k: int) -> str:
    """Directory of draw k of a purified set: ``<set>`` for k = 0, ``<set>~s<k>`` after."""
    return set_name if k == 0 else f"{set_name}~s{k}"


def adaptive_set(setting: str, defence: str, eps: float) -> str:
    """Directory of one adaptive set: ``<setting>.<defence>.eps_<level>``."""
    return f"{setting}.{defence.replace('+', '_')}.eps_{eps:g}"


def selected_t_star(params: Params, paths: Paths) -> int:
    """t* in use: params.purify.t_star, or the select_tstar stage's choice when it is auto."""
    if params.purify.t_star != "auto":
        return params.t_star_fixed()
    info = read_json(paths.tstar, "t* selection", hint=" (run the select_tstar stage first)")
    return int(info["t_star"])


def sampler_steps(params: Params, t_star: int) -> int | None:
    """Reverse steps of one purification at ``t_star``: DDIM takes ``purify.ddim_steps``, or t* when t* is
    smaller (one step per timestep at most); None for DDPM (every timestep t*, ..., 0)."""
    p = params.purify
    return max(1, min(p.ddim_steps, t_star)) if p.sampler == "ddim" else None
