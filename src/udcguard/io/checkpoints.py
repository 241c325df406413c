"""Model weights and training checkpoints on disk (the only place they are read or written).

Two kinds of files:

- a *model* directory: ``model.safetensors`` (the ``state_dict``, no pickle) and
  ``spec.json`` (what is needed to rebuild the module: architecture name and keyword
  arguments, chosen by the caller). :func:`save_model` / :func:`load_state`.
- a *training state*: model, optimizer, scheduler, step, generator state and loss history
  in one ``torch.save`` file that loads with ``torch.load(weights_only=True)``.
  :func:`save_train_state` / :func:`load_train_state`.

Every file is written atomically (temporary name, fsync, rename); errors are one line
naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from udcguard.errors import UdcGuardError
from udcguard.io.atomic import read_json, save_json, write_bytes

MODEL_FILE = "model.safetensors"
SPEC_FILE = "spec.json"

#: File suffixes read by :func:`load_external_state_dict` with ``torch.load``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def save_model(model: nn.Module, dir: str | Path, spec: dict[str, Any]) -> Path:
    """Write ``dir/model.safetensors`` (CPU, contiguous copies) then ``dir/spec.json``.

    ``spec.json`` is written last, so a directory with a spec has complete weights.
    Returns ``dir``.
    """
    dir = Path(dir)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    write_bytes(dir / MODEL_FILE, st_save(state))
    save_json(dir / SPEC_FILE, spec)
    return dir


def load_state(dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a directory written by :func:`save_model`: ``(state_dict on CPU, spec)``."""
    dir = Path(dir)
    spec_path, model_path = dir / SPEC_FILE, dir / MODEL_FILE
    spec = read_json(spec_path, "model spec", hint=" (incomplete or missing model)")
    if not isinstance(spec, dict):
        raise UdcGuardError(f"{spec_path}: model spec is not a JSON object")
    return _read_safetensors(model_path), spec


def save_train_state(path: str | Path, state: dict[str, Any]) -> str:
    """Atomically ``torch.save`` a training state; returns the file's sha256.

    Only weights-only-loadable values are accepted (tensors, dicts, lists, tuples, str,
    int, float, bool, None); anything else fails here, not at resume time.
    """
    _check_weights_only(state, "state")
    buf = io.BytesIO()
    torch.save(state, buf)
    return write_bytes(path, buf.getvalue())


def load_train_state(path: str | Path) -> dict[str, Any] | None:
    """Load a training state saved by :func:`save_train_state`; ``None`` if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UdcGuardError(f"{path}: corrupt training state ({_first_line(err)})") from None
    if not isinstance(state, dict):
        raise UdcGuardError(f"{path}: training state is a {type(state).__name__}, expected a dict")
    return state


def load_external_state_dict(
    path: str | Path,
    key_map: Mapping[str, str] | Callable[[str], str | None] | None = None,
    *,
    subkey: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a local ``.safetensors`` or ``.pth``/``.pt``/``.bin``/``.ckpt`` state_dict.

    Args:
        path: local file; never downloaded.
        key_map: renames keys. A mapping is a prefix map (``{"module.": ""}`` strips a
            ``DataParallel`` prefix; the longest matching prefix wins; unmatched keys are
            kept). A callable returns the new key, or ``None`` to drop the entry.
        subkey: for ``torch.load`` files that wrap the weights in a dict (BasicSR's
            ``"params_ema"``, Lightning's ``"state_dict"``), the key holding them.

    Returns:
        ``{name: tensor}`` on CPU. Errors (missing file, unreadable, not a flat dict of
        tensors, renamed keys colliding) name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UdcGuardError(f"{path}: weights file not found (no downloads: give a local file)")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise UdcGuardError(f"{path}: unreadable weights ({_first_line(err)})") from None
    else:
        raise UdcGuardError(
            f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    if subkey is not None:
        if not isinstance(obj, dict) or subkey not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else []
            raise UdcGuardError(f"{path}: no key {subkey!r}; top-level keys: {keys[:10]}")
        obj = obj[subkey]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor)) if isinstance(obj, dict) else []
        raise UdcGuardError(
            f"{path}: not a flat state_dict of tensors (non-tensor entries {keys[:10]}; "
            "pass subkey= to pick the nested weights)"
        )
    return _rename(obj, key_map, path)


#: Top-level keys under which released checkpoints nest their weights, tried in order
#: (BasicSR's EMA then plain weights, Lightning / generic trainers).
NESTED_WEIGHT_KEYS = ("params_ema", "params", "state_dict", "model", "net", "network")


def load_official_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load a checkpoint in the authors' released format into ``model`` (strictly).

    The weights may be a flat state_dict or nested under one of
    :data:`NESTED_WEIGHT_KEYS`. Keys are renamed with ``model.official_key`` (a
    :class:`~udcguard.models.Restorer` classmethod; identity when absent), then every key and
    shape must match ``model.state_dict()`` exactly: an architecture or size mismatch is an
    error naming the file and the first differing keys, and ``model`` is left untouched.

    Returns the sorted list of loaded keys (ours).
    """
    path = Path(path)
    subkey = _nested_key(path)
    rename = getattr(model, "official_key", None)
    state = load_external_state_dict(path, rename, subkey=subkey)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} with other shapes (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise UdcGuardError(
            f"{path}: checkpoint does not match {type(model).__name__} "
            f"{getattr(model, 'config', '')}: {'; '.join(parts)}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return sorted(state)


def _nested_key(path: Path) -> str | None:
    """The key of :data:`NESTED_WEIGHT_KEYS` that holds the weights of a torch file, if any."""
    if path.suffix not in TORCH_SUFFIXES or not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_external_state_dict reports it
        return None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in NESTED_WEIGHT_KEYS:
            if isinstance(obj.get(key), dict):
                return key
    return None


def _rename(
    state: dict[str, torch.Tensor],
    key_map: Mapping[str, str] | Callable[[str], str | None] | None,
    path: Path,
) -> dict[str, torch.Tensor]:
    if key_map is None:
        return dict(state)
    if callable(key_map):
        fn = key_map
    else:
        prefixes = sorted(key_map, key=len, reverse=True)

        def fn(key: str) -> str | None:
            for p in prefixes:
                if key.startswith(p):
                    return key_map[p] + key[len(p):]
            return key

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = fn(key)
        if new is None:
            continue
        if new in out:
            raise UdcGuardError(f"{path}: key map sends two entries to {new!r}")
        out[new] = value
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UdcGuardError(f"{path}: weights file not found") from None
    except OSError as err:
        raise UdcGuardError(f"{path}: unreadable weights ({err})") from None
    try:
        return st_load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise UdcGuardError(f"{path}: corrupt safetensors file ({_first_line(err)})") from None


_LEAVES = (str, int, float, bool, type(None), torch.Tensor)


def _check_weights_only(obj: Any, where: str) -> None:
    if isinstance(obj, _LEAVES):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str/int")
            _check_weights_only(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} cannot be loaded with weights_only=True")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
