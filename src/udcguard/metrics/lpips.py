"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018, arXiv 1801.03924), from local weights only (no torchvision, no downloads).

For images a, b in [0, 1] (mapped to [-1, 1], then the LPIPS scaling layer
``(x - shift) / scale`` with shift (-.030, -.088, -.188), scale (.458, .448, .450)):

    LPIPS(a, b) = sum_l mean_{h,w} sum_c w_lc (f_l(a)_chw / ||f_l(a)_hw|| - f_l(b)_chw / ||f_l(b)_hw||)^2

where f_l are five ReLU outputs of a backbone, the norm is over channels (plus 1e-10, as in
the lpips package) and w_l >= 0 are the learned 1x1 "lin" layers. This is the lpips
package's ``LPIPS(net=..., version="0.1")(a, b, normalize=True)``.

Backbones (their ``features`` rebuilt with torchvision's indices, so a torchvision
``alexnet`` / ``vgg16`` state_dict, keys ``features.N.weight`` / ``features.N.bias``, loads as
is; classifier keys are ignored):

- ``alex`` (default, as in lpips): taps after ``features.{1, 4, 7, 9, 11}``, channels
  64, 192, 384, 256, 256; images at least 31 x 31.
- ``vgg`` (alias ``vgg16``): taps relu1_2 .. relu5_3 = ``features.{3, 8, 15, 22, 29}``,
  channels 64, 128, 256, 512, 512; images at least 16 x 16.

Lin weights use the lpips package's key format (its released ``weights/v0.1/alex.pth``
loads): ``lin{l}.model.1.weight`` of shape (1, C_l, 1, 1) (``lin{l}.model.0.weight``,
saved without dropout, is accepted too); they must be non-negative.

Without pretrained weights there is no LPIPS. :func:`build_lpips` then returns the
explicitly named ``lpips_rand``: the same formula on a backbone initialised from a fixed
seed (He-normal conv weights drawn from ``torch.Generator().manual_seed(seed)``, zero
biases) with every lin weight 1 (the lpips package's unlearned ``lpips=False`` baseline,
a plain sum over channels). It is deterministic and differentiable but it is NOT LPIPS:
its values are not comparable with published LPIPS numbers, and it is reported as
``lpips_rand``, never as ``lpips``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_external_state_dict

#: The lpips package's scaling layer, applied to inputs in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: Added to the channel norm before dividing (lpips.normalize_tensor).
NORM_EPS = 1e-10
#: Seed of the random backbone of ``lpips_rand``.
RAND_SEED = 0

WeightsArg = str | Path | Mapping[str, Tensor] | None


@dataclass(frozen=True)
class Backbone:
    """A backbone: its torchvision ``features`` layers, tapped indices and their widths."""

    arch: str  # torchvision's name, for messages
    layers: tuple[tuple, ...]  # ("conv", c_in, c_out, k, stride, pad) | ("relu",) | ("pool", k, stride)
    taps: tuple[int, ...]
    channels: tuple[int, ...]
    min_size: int


def _vgg16_layers() -> tuple[tuple, ...]:
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
    out: list[tuple] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            out.append(("pool", 2, 2))
        else:
            out += [("conv", c_in, v, 3, 1, 1), ("relu",)]
            c_in = int(v)
    return tuple(out)


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        arch="alexnet",
        layers=(
            ("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2),
            ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool", 3, 2),
            ("conv", 192, 384, 3, 1, 1), ("relu",),
            ("conv", 384, 256, 3, 1, 1), ("relu",),
            ("conv", 256, 256, 3, 1, 1), ("relu",),
        ),  # torchvision alexnet().features[:12]
        taps=(1, 4, 7, 9, 11),
        channels=(64, 192, 384, 256, 256),
        min_size=31,
    ),
    "vgg": Backbone(
        arch="vgg16",
        layers=_vgg16_layers(),  # torchvision vgg16().features[:30]
        taps=(3, 8, 15, 22, 29),
        channels=(64, 128, 256, 512, 512),
        min_size=16,
    ),
}
NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}


def backbone(net: str) -> Backbone:
    """The :class:`Backbone` called ``net`` ("alex", "vgg"; aliases "alexnet", "vgg16")."""
    try:
        return BACKBONES[NET_ALIASES[net]]
    except KeyError:
        raise UdcGuardError(f"unknown LPIPS backbone {net!r}; valid: {', '.join(sorted(NET_ALIASES))}") from None


def _features(bb: Backbone) -> nn.Sequential:
    layers: list[nn.Module] = []
    for spec in bb.layers:
        if spec[0] == "conv":
            _, c_in, c_out, k, s, p = spec
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p))
        elif spec[0] == "relu":
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(kernel_size=spec[1], stride=spec[2]))
    return nn.Sequential(*layers)


class _Lin(nn.Module):
    """lpips' NetLinLayer without dropout: key ``model.1.weight`` (1, C, 1, 1), no bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPS(nn.Module):
    """LPIPS distance (or its random-feature stand-in ``lpips_rand``), frozen, per image.

    Args:
        backbone_weights: a local ``.pth`` / ``.safetensors`` torchvision ``alexnet`` (or
            ``vgg16``) state_dict, or such a dict in memory. None (with ``lin_weights`` None):
            the random backbone of ``lpips_rand``.
        lin_weights: the lpips package's lin weights (``lin0.model.1.weight`` ...), file or
            dict. Required with ``backbone_weights``, and only with it.
        net: "alex" (default, as the lpips package) or "vgg".
        seed: seed of the random backbone (``lpips_rand`` only).

    Attributes:
        name: "lpips" with pretrained weights, "lpips_rand" without.

    Shape:
        a, b: (B, 3, H, W) in [0, 1], H, W >= ``backbone(net).min_size``; result (B,).
        Parameters never require grad and the module stays in eval mode; gradients flow to
        the inputs. Computed in the module's dtype (float32), returned in the inputs' dtype.
    """

    def __init__(
        self,
        backbone_weights: WeightsArg = None,
        lin_weights: WeightsArg = None,
        *,
        net: str = "alex",
        seed: int = RAND_SEED,
    ) -> None:
        super().__init__()
        self.bb = backbone(net)
        self.net = NET_ALIASES[net]
        if (backbone_weights is None) != (lin_weights is None):
            given, missing = ("backbone", "lin") if lin_weights is None else ("lin", "backbone")
            raise UdcGuardError(
                f"LPIPS: {given} weights given without {missing} weights; give both (pretrained "
                "LPIPS) or neither (the random-feature 'lpips_rand')"
            )
        self.pretrained = backbone_weights is not None
        self.name = "lpips" if self.pretrained else "lpips_rand"
        # Built on the meta device (no default init, global RNG untouched), then allocated:
        # every parameter is overwritten below, by the loaded weights or the seeded init.
        with torch.device("meta"):
            self.features = _features(self.bb)
            for i, c in enumerate(self.bb.channels):
                self.add_module(f"lin{i}", _Lin(c))
        self.to_empty(device="cpu")
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if backbone_weights is not None and lin_weights is not None:
            self._load_backbone(*_state(backbone_weights))
            self._load_lins(*_state(lin_weights))
        else:
            self._init_random(seed)
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------ weights
    @property
    def lins(self) -> list[nn.Conv2d]:
        return [getattr(self, f"lin{i}").model[1] for i in range(len(self.bb.channels))]

    def _init_random(self, seed: int) -> None:
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer in self.features:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.weight[0].numel()
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                    assert layer.bias is not None
                    layer.bias.zero_()
            for lin in self.lins:
                lin.weight.fill_(1.0)

    def _load_backbone(self, state: Mapping[str, Tensor], source: str) -> None:
        own = self.features.state_dict()
        prefix = "features." if any(k.startswith("features.") for k in state) else ""
        picked: dict[str, Tensor] = {}
        for key, ref in own.items():
            full = prefix + key
            if full not in state:
                raise UdcGuardError(
                    f"{source}: no 'features.{key}': not a torchvision {self.bb.arch} state_dict "
                    f"(LPIPS net {self.net!r})"
                )
            _check_shape(state[full], ref, full, source, f"torchvision {self.bb.arch}")
            picked[key] = state[full].to(ref.dtype)
        self.features.load_state_dict(picked)

    def _load_lins(self, state: Mapping[str, Tensor], source: str) -> None:
        for i, lin in enumerate(self.lins):
            keys = [f"lin{i}.model.1.weight", f"lin{i}.model.0.weight"]
            key = next((k for k in keys if k in state), None)
            if key is None:
                raise UdcGuardError(f"{source}: no {keys[0]!r}: not an lpips lin-weights file")
            w = state[key]
            _check_shape(w, lin.weight, key, source, f"LPIPS {self.net} lin weights")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise UdcGuardError(f"{source}: {key} has negative or non-finite weights (LPIPS lins are >= 0)")
            with torch.no_grad():
                lin.weight.copy_(w.to(lin.weight.dtype))

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval: a frozen metric (the lins carry no dropout anyway)."""
        return super().train(False)

    # ------------------------------------------------------------ computation
    def taps(self, x: Tensor) -> list[Tensor]:
        """The five raw backbone features of a (B, 3, H, W) batch in [0, 1] (module dtype)."""
        h = ((2.0 * x.to(self.shift.dtype) - 1.0) - self.shift) / self.scale
        out: list[Tensor] = []
        last = self.bb.taps[-1]
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.bb.taps:
                out.append(h)
            if i == last:
                break
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS(a, b) per image: (B, 3, H, W) x (B, 3, H, W) in [0, 1] -> (B,)."""
        self._check(a, b)
        fa, fb = self.taps(a), self.taps(b)
        total = a.new_zeros(a.shape[0], dtype=self.shift.dtype)
        for lin, xa, xb in zip(self.lins, fa, fb):
            diff = (_unit(xa) - _unit(xb)).square()  # (B, C, h, w)
            total = total + F.conv2d(diff, lin.weight).mean(dim=(1, 2, 3))
        return total.to(a.dtype)

    def _check(self, a: Tensor, b: Tensor) -> None:
        if a.shape != b.shape:
            raise ValueError(f"{self.name}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"{self.name}: expected (B, 3, H, W), got {tuple(a.shape)}")
        if min(a.shape[-2:]) < self.bb.min_size:
            raise ValueError(
                f"{self.name}: images must be at least {self.bb.min_size}x{self.bb.min_size} for "
                f"net {self.net!r}, got {a.shape[-2]}x{a.shape[-1]}"
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, net={self.net!r}"


def _unit(f: Tensor) -> Tensor:
    """f / (||f||_channels + 1e-10). vector_norm's backward is 0 (not NaN) at a zero vector."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + NORM_EPS)


def _state(weights: str | Path | Mapping[str, Tensor]) -> tuple[Mapping[str, Tensor], str]:
    if isinstance(weights, Mapping):
        return weights, "state_dict"
    return load_external_state_dict(Path(weights)), str(weights)


def _check_shape(got: Tensor, ref: Tensor, key: str, source: str, what: str) -> None:
    if not isinstance(got, Tensor) or tuple(got.shape) != tuple(ref.shape):
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        raise UdcGuardError(f"{source}: {key} has shape {shape}, expected {tuple(ref.shape)} ({what})")


def build_lpips(
    backbone_weights: WeightsArg = None, lin_weights: WeightsArg = None, net: str = "alex"
) -> tuple[str, LPIPS]:
    """``("lpips", module)`` from local pretrained weights (both files), or
    ``("lpips_rand", module)`` when neither is given (random features; see the module
    docstring). A missing, unreadable or mismatched file is a one-line
    :class:`UdcGuardError` naming it."""
    module = LPIPS(backbone_weights, lin_weights, net=net)
    return module.name, module


def lpips_per_image(module: LPIPS, a: Tensor, b: Tensor) -> Tensor:
    """``module``'s distance between a and b, (B, 3, H, W) in [0, 1] -> (B,), detached.

    The column is named ``module.name`` ("lpips" or "lpips_rand"). Runs without a graph,
    on the inputs' device (the module is moved there if needed).
    """
    if module.shift.device != a.device:
        module.to(a.device)
    with torch.no_grad():
        return module(a, b).detach()


__all__ = ["BACKBONES", "LPIPS", "backbone", "build_lpips", "lpips_per_image"]
