"""VGG-19 perceptual loss from local weights (no torchvision, no downloads).

The reference paper fine-tunes with L2 + a VGG-19 perceptual term on relu3_3 and relu4_2
(Song et al., arXiv 2402.13629; Johnson et al., arXiv 1603.08155 for the loss). The
feature extractor is torchvision's ``vgg19().features`` rebuilt layer by layer with the same
indices, so a torchvision ``vgg19`` state_dict (``features.N.weight`` / ``features.N.bias``)
loads as is; classifier weights and layers past the deepest one used are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_external_state_dict

#: torchvision's VGG-19 ("E") configuration: conv widths, "M" = 2x2 max-pool.
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_relu_indices() -> dict[str, int]:
    """``{"relu1_1": 1, ..., "relu3_3": 15, "relu4_2": 22, ...}``: indices in ``features``."""
    out: dict[str, int] = {}
    idx, block, conv = 0, 1, 0
    for v in VGG19_CFG:
        if v == "M":
            idx, block, conv = idx + 1, block + 1, 0
        else:
            conv += 1
            out[f"relu{block}_{conv}"] = idx + 1  # conv at idx, its ReLU at idx + 1
            idx += 2
    return out


class VGGPerceptual(nn.Module):
    """Sum over layers of the mean L1 distance between VGG-19 features of two images.

    Args:
        weights: a local ``.safetensors`` / ``.pth`` file with torchvision-style keys, or
            such a state_dict already in memory. A missing file is a :class:`UdcGuardError`.
        layers: ReLU outputs compared (default the paper's relu3_3 and relu4_2).
        layer_weights: one weight per layer (default 1 each).

    Shape:
        pred, target: (B, 3, H, W) in [0, 1] (ImageNet-normalised inside); H, W >= 8 for
        relu4_*; result: () tensor. Parameters are frozen; gradients flow to the inputs.
    """

    def __init__(
        self,
        weights: str | Path | Mapping[str, torch.Tensor],
        *,
        layers: Sequence[str] = ("relu3_3", "relu4_2"),
        layer_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        relu = vgg19_relu_indices()
        unknown = [name for name in layers if name not in relu]
        if unknown or not layers:
            raise ValueError(f"unknown VGG-19 layers {unknown}; valid: {', '.join(relu)}")
        if layer_weights is not None and len(layer_weights) != len(layers):
            raise ValueError(f"{len(layer_weights)} layer weights for {len(layers)} layers")
        self.taps = [relu[name] for name in layers]
        self.layer_weights = [1.0] * len(layers) if layer_weights is None else [float(w) for w in layer_weights]
        self.features = _vgg19_features(upto=max(self.taps))
        source = "state_dict" if isinstance(weights, Mapping) else str(weights)
        state = weights if isinstance(weights, Mapping) else load_external_state_dict(Path(weights))
        self._load(state, source)
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        own = self.features.state_dict()
        picked: dict[str, torch.Tensor] = {}
        for key, ref in own.items():
            full = f"features.{key}"
            if full not in state:
                raise UdcGuardError(f"{source}: no {full!r}: not a torchvision VGG-19 state_dict")
            if tuple(state[full].shape) != tuple(ref.shape):
                raise UdcGuardError(f"{source}: {full} has shape {tuple(state[full].shape)}, expected {tuple(ref.shape)}")
            picked[key] = state[full].to(ref.dtype)
        self.features.load_state_dict(picked)

    def feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at the chosen layers of a (B, 3, H, W) [0, 1] batch."""
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        found: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                found[i] = h
        return [found[t] for t in self.taps]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b = pred.shape[0]
        both = self.feats(torch.cat([pred, target]))  # one pass over (2B, 3, H, W)
        return sum((w * F.l1_loss(f[:b], f[b:]) for w, f in zip(self.layer_weights, both)),
                   start=pred.new_zeros(()))


def build_perceptual(weights_path: str | Path | None, **kwargs: object) -> VGGPerceptual | None:
    """A :class:`VGGPerceptual` from a local weights file, or None when no path is given
    (the caller reports that the perceptual term is off). ``kwargs`` go to the class."""
    if weights_path is None:
        return None
    return VGGPerceptual(Path(weights_path), **kwargs)  # type: ignore[arg-type]


def _vgg19_features(upto: int) -> nn.Sequential:
    """torchvision's ``vgg19().features`` (same indices) truncated after index ``upto``."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers[: upto + 1])
