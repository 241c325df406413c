"""Restorer base class, the restorer registry, and the preset-based builder.

Every restorer maps a degraded UDC image to its restoration in the same tone-mapped space:
``forward(x, cond=None)`` with x of shape (B, C, H, W), float32 in [0, 1], returns (B, C, H, W).
The network predicts a residual that is added to the input; nothing is clamped here (the
caller clamps). Any H and W are accepted: the input is padded (reflect, or replicate where
reflect is impossible) to a multiple of :attr:`Restorer.multiple` and the output is cropped
back. Gradients flow to x (attacks need them) and to cond.

Each architecture lives in its own module, registers its class in :data:`RESTORERS` and
declares ``presets``: plain constructor keyword arguments for each size in :data:`SIZES`.
The constructor arguments are the config: ``model.config`` holds them, so
:func:`restorer_spec` can name the preset a model was built from and
``build_restorer(**restorer_spec(model))`` rebuilds the same architecture.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.errors import UnknownNameError
from udcguard.registry import Registry

#: Size presets every architecture provides: ``tiny`` (tests, ~0.05-0.15 M parameters),
#: ``small`` (CPU training on 64 x 64 crops, ~0.3-1 M) and ``paper`` (published configuration).
SIZES: tuple[str, ...] = ("tiny", "small", "paper")


class UnknownSizeError(UnknownNameError, ValueError):
    """A size preset name is not one of :data:`SIZES`; lists the valid ones."""


class Restorer(nn.Module):
    """Base of all restorers: padding to ``multiple``, cond checks, residual output, crop.

    Subclasses set the class attributes and implement :meth:`_forward`, which returns the
    residual. Their constructor arguments (defaults filled in) become ``self.config`` by
    themselves: every subclass ``__init__`` is wrapped by :func:`_records_config`.

    Attributes:
        multiple: input sides are padded up to a multiple of this (2 ** number of downsamplings).
        conditional: whether ``cond`` (a per-image code, e.g. DISCNet's PSF kernel code) is
            required; unconditional restorers ignore it.
        cond_dim: length d of the code for conditional restorers; 0 otherwise.
        presets: size name -> constructor keyword arguments (``cond_dim`` excluded).

    Shape:
        x: (B, C, H, W) float32, tone-mapped, in [0, 1]; any H, W >= 1.
        cond: (B, cond_dim) float32 or None.
        output: (B, C, H, W), not clamped.
    """

    multiple: int = 1
    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    cond_dim: int = 0
    #: Prefix map from the authors' released parameter names to ours (longest prefix wins);
    #: empty where our module names already follow the released code.
    official_prefixes: ClassVar[dict[str, str]] = {}

    @classmethod
    def official_key(cls, key: str) -> str | None:
        """Our state_dict key for a key of the authors' released checkpoint (None: drop it).

        The default strips a ``module.`` (DataParallel) prefix and applies
        :attr:`official_prefixes`; architectures whose released names need more override it.
        """
        if key.startswith("module."):
            key = key[len("module."):]
        for prefix in sorted(cls.official_prefixes, key=len, reverse=True):
            if key.startswith(prefix):
                return cls.official_prefixes[prefix] + key[len(prefix):]
        return key

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _records_config(cls.__dict__["__init__"])

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects x of shape (B, C, H, W), got {tuple(x.shape)}")
        if self.conditional:
            cond = self._check_cond(x, cond)
        else:
            cond = None
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.multiple)  # (B, C, Hp, Wp)
        residual = self._forward(xp, cond)  # (B, C, Hp, Wp)
        return x + residual[..., :h, :w]  # (B, C, H, W)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Residual for a padded input x (B, C, Hp, Wp); Hp, Wp are multiples of ``multiple``."""
        raise NotImplementedError

    def _check_cond(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        name = type(self).__name__
        expected = (x.shape[0], self.cond_dim)
        if cond is None:
            raise ValueError(
                f"{name} is conditional: forward(x, cond) needs cond of shape (B, cond_dim) = "
                f"{expected} (e.g. the PSF kernel code), got None"
            )
        if tuple(cond.shape) != expected:
            raise ValueError(
                f"{name}: cond must have shape (B, cond_dim) = {expected}, got {tuple(cond.shape)}"
            )
        return cond.to(dtype=x.dtype, device=x.device)


def _records_config(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a restorer's ``__init__`` so that it ends with ``self.config`` = its arguments, by name,
    defaults filled in (the outermost constructor wins when subclasses chain ``super().__init__``)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Restorer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.config = dict(list(bound.arguments.items())[1:])

    return wrapper


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of x (B, C, H, W) so that H and W become multiples of ``multiple``.

    Reflect padding where possible (pad < side), replicate otherwise (tiny inputs).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)  # (B, C, Hp, Wp)


RESTORERS: Registry[type[Restorer]] = Registry("restorer")


def build_restorer(arch: str, *, size: str = "small", cond_dim: int = 5) -> Restorer:
    """Build a registered restorer from its size preset.

    Args:
        arch: registered architecture name (``RESTORERS.names()``).
        size: one of :data:`SIZES`.
        cond_dim: kernel-code length d for conditional restorers (DISCNet: 5); ignored by
            unconditional ones.

    Raises:
        UnknownNameError: unknown ``arch``.
        UnknownSizeError: unknown ``size`` (a ValueError and an UnknownNameError).
        ValueError: ``cond_dim`` < 1 for a conditional restorer.
    """
    cls = RESTORERS.get(arch)
    if size not in cls.presets:
        raise UnknownSizeError(
            f"unknown size {size!r} for restorer {arch!r}; valid: {', '.join(cls.presets)}"
        )
    kwargs = dict(cls.presets[size])
    if cls.conditional:
        if cond_dim < 1:
            raise ValueError(f"restorer {arch!r} is conditional: cond_dim must be >= 1, got {cond_dim}")
        kwargs["cond_dim"] = cond_dim
    return cls(**kwargs)


def restorer_spec(model: Restorer) -> dict[str, Any]:
    """``{"arch", "size", "cond_dim"}`` such that ``build_restorer(**spec)`` rebuilds ``model``.

    Raises:
        ValueError: the model's class is not registered, or its constructor arguments match
            none of its presets.
    """
    arch = next((n for n in RESTORERS.names() if RESTORERS.get(n) is type(model)), None)
    if arch is None:
        raise ValueError(f"{type(model).__name__} is not a registered restorer")
    cls = type(model)
    config = dict(model.config)
    cond_dim = int(config.pop("cond_dim", 0))
    for size, preset in cls.presets.items():
        if _with_defaults(cls, preset) == _with_defaults(cls, config):
            return {"arch": arch, "size": size, "cond_dim": cond_dim}
    raise ValueError(
        f"{cls.__name__} config {config} matches none of the presets "
        f"{', '.join(cls.presets)}; build it with build_restorer to save a spec"
    )


def _with_defaults(cls: type[Restorer], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments with the signature's defaults filled in (cond_dim dropped)."""
    params = inspect.signature(cls.__init__).parameters.values()
    full = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    full.update(kwargs)
    full.pop("cond_dim", None)
    return {k: _tuples(v) for k, v in full.items()}


def _tuples(value: Any) -> Any:
    """Lists as tuples, recursively: ``depths=[1, 2]`` and ``depths=(1, 2)`` are one config."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def num_parameters(model: nn.Module) -> int:
    """Total number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
