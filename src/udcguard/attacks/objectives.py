"""Attack objectives d(output, reference) -> per-image distortion, shape (B,).

An attack maximises ``d(f(y + delta), r)`` (design.md, section 3). Every objective here
reduces over all non-batch dimensions, so the images of a batch stay independent: the
gradient of ``d(...).sum()`` with respect to image ``i`` is the gradient of ``d_i`` alone.

- ``mse``: mean of (output - reference)^2 over (C, H, W). Default.
- ``l1``: mean of |output - reference| over (C, H, W).
- ``ssim``: 1 - SSIM(output, reference) per image, SSIM as
  :func:`udcguard.metrics.image.ssim` (skimage's Gaussian SSIM: 11x11 window, sigma 1.5,
  K1 0.01, K2 0.03, data_range 1, population covariances, 5-pixel border cropped, mean over
  pixels and channels). Images at least 11 x 11.
- ``ce``: cross-entropy of logits (B, K) against integer labels (B,). NOT an objective for
  restorers: it exists so that the attacks can be checked against reference classifier
  attacks (torchattacks) in the tests. Use it with ``reference="gt"`` and ``gt=labels``.

Objectives with weights are callables built by :func:`make_objective`, not registered:

- ``lpips``: the LPIPS distance (:mod:`udcguard.metrics.lpips`) from local pretrained weights
  (``lpips_backbone``: a torchvision alexnet/vgg16 state_dict file; ``lpips_lin``: the lpips
  package's lin weights). Nothing is downloaded; without the files there is no ``lpips``.
- ``lpips_rand``: the same formula on a randomly initialised backbone (fixed seed, lin
  weights 1): a deterministic feature-space objective that is NOT LPIPS. Also accepted by
  name (:func:`resolve_objective`), since it needs no file.

Every objective has a ``name`` (its display name); attacks take a name or such a callable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from udcguard.errors import UdcGuardError, UnknownNameError
from udcguard.metrics.image import ssim as _ssim
from udcguard.metrics.lpips import LPIPS, WeightsArg, build_lpips
from udcguard.registry import Registry

#: (output, reference) -> (B,) distortion; larger means a stronger attack. Built-in ones
#: carry a ``name`` attribute (the display name); any other callable is named by __name__.
Objective = Callable[[Tensor, Tensor], Tensor]

#: The plain (weight-free) objectives, by name.
OBJECTIVES: Registry[Objective] = Registry("objective")

#: Objectives built from an LPIPS module by :func:`make_objective` (not in OBJECTIVES).
LPIPS_OBJECTIVES = ("lpips", "lpips_rand")


def _register(name: str) -> Callable[[Objective], Objective]:
    """Register in OBJECTIVES and set the function's ``name`` to ``name``."""

    def deco(fn: Objective) -> Objective:
        OBJECTIVES.add(name, fn)
        fn.name = name  # type: ignore[attr-defined]
        return fn

    return deco


def _check_same_shape(output: Tensor, reference: Tensor) -> None:
    if output.shape != reference.shape:
        raise ValueError(
            f"objective: output shape {tuple(output.shape)} != reference shape "
            f"{tuple(reference.shape)}"
        )


@_register("mse")
def mse(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image mean squared error: (B, ...) x (B, ...) -> (B,)."""
    _check_same_shape(output, reference)
    return (output - reference).square().flatten(1).mean(1)


@_register("l1")
def l1(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image mean absolute error: (B, ...) x (B, ...) -> (B,)."""
    _check_same_shape(output, reference)
    return (output - reference).abs().flatten(1).mean(1)


@_register("ce")
def cross_entropy(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image cross-entropy of logits (B, K) against labels (B,) int64 -> (B,).

    Classifier objective for reference tests only; not meaningful for restorers.
    """
    if output.ndim != 2 or reference.shape != output.shape[:1]:
        raise ValueError(
            f"objective 'ce': expects logits (B, K) and labels (B,), got "
            f"{tuple(output.shape)} and {tuple(reference.shape)}"
        )
    return F.cross_entropy(output, reference.to(torch.long), reduction="none")


@_register("ssim")
def ssim_distortion(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image 1 - SSIM: (B, C, H, W) x (B, C, H, W) -> (B,), H, W >= 11; 0 for equal images."""
    _check_same_shape(output, reference)
    return 1.0 - _ssim(output, reference, data_range=1.0)


class LPIPSObjective:
    """d = LPIPS(output, reference) per image, (B,), differentiable w.r.t. both inputs.

    The module is frozen (no parameter requires grad, eval mode), so no gradient ever
    accumulates in it; it is moved to the inputs' device on first use there.
    ``name`` is the module's: "lpips" (pretrained) or "lpips_rand" (random features).
    """

    def __init__(self, module: LPIPS) -> None:
        module.requires_grad_(False)
        module.eval()
        self.module = module
        self.name = module.name

    def __call__(self, output: Tensor, reference: Tensor) -> Tensor:
        _check_same_shape(output, reference)
        if self.module.shift.device != output.device:
            self.module.to(output.device)
        return self.module(output, reference)

    def __repr__(self) -> str:
        return f"LPIPSObjective({self.name!r}, net={self.module.net!r})"


def make_objective(
    name: str,
    *,
    lpips_backbone: WeightsArg = None,
    lpips_lin: WeightsArg = None,
    net: str = "alex",
) -> Objective:
    """The objective ``name`` as a callable with a ``name`` attribute.

    Args:
        name: a registered name (``mse``, ``l1``, ``ssim``, ``ce``), ``lpips`` or ``lpips_rand``.
        lpips_backbone, lpips_lin: local weight files (or state_dicts) for ``lpips``: a
            torchvision alexnet (or vgg16, with ``net="vgg"``) state_dict and the lpips
            package's lin weights. Ignored by every other objective.
        net: LPIPS backbone, "alex" (default) or "vgg".

    Raises:
        UdcGuardError: ``lpips`` without both weight files (nothing is downloaded), or a
            missing / mismatched file (named). UnknownNameError: an unknown name.
    """
    if name == "lpips":
        if lpips_backbone is None or lpips_lin is None:
            raise UdcGuardError(
                "objective 'lpips' needs pretrained LPIPS weights, which cannot be downloaded: set the "
                "LPIPS backbone and lin weights paths (a torchvision alexnet state_dict and the lpips "
                "package's lin weights), or use objective 'lpips_rand' (random features, not LPIPS)"
            )
        _, module = build_lpips(lpips_backbone, lpips_lin, net=net)
        return LPIPSObjective(module)
    if name == "lpips_rand":
        _, module = build_lpips(None, None, net=net)
        return LPIPSObjective(module)
    try:
        return OBJECTIVES.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e}; also {', '.join(LPIPS_OBJECTIVES)} (lpips needs weights)") from None


def objective_name(fn: Objective) -> str:
    """Display name of an objective: its ``name`` attribute, else ``__name__``, else its type."""
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def resolve_objective(objective: str | Objective) -> tuple[str, Objective]:
    """(display name, callable) of a name (see :func:`make_objective`, no weights) or a callable.

    Raises UdcGuardError for ``"lpips"`` (weights needed: pass ``make_objective("lpips",
    ...)``), an unknown name (UnknownNameError) or something that is neither.
    """
    if isinstance(objective, str):
        fn = make_objective(objective)
        return objective_name(fn), fn
    if callable(objective):
        return objective_name(objective), objective
    raise UdcGuardError(f"objective must be a name or a callable, got {type(objective).__name__}")


def objective(name: str) -> Objective:
    """The objective registered as ``name`` (UnknownNameError lists the valid ones)."""
    return OBJECTIVES.get(name)
