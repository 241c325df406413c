"""Plain U-Net restorer, the unconditional baseline.

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv 1505.04597.

Mechanism: a contracting path of double 3x3 conv + ReLU blocks, each followed by 2x
downsampling, a bottleneck block, and an expanding path of 2x2 transposed convolutions
("up-convolutions") whose output is concatenated with the encoder feature of the same scale
(skip connection) and refined by a double conv block. A 1x1 conv maps to the image channels.
Adapted to restoration: "same" padding, 2x2 average pooling instead of max pooling (smoother
gradients for attacks), and a residual output (the network predicts y_hat - x).

Sizes (3-channel images; ``num_parameters``):
    tiny:  width 16, depth 2 ->    117,075 parameters
    small: width 16, depth 3 ->    482,067 parameters
    paper: width 64, depth 4 -> 31,031,875 parameters (the paper's 64 ... 1024 channel
           layout; the original's ~31.0 M differs only by its in/out channels)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from udcguard.models.base import RESTORERS, Restorer


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> ReLU) x 2, "same" padding. Shape: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
        )


@RESTORERS.register("unet")
class UNet(Restorer):
    """U-Net with a residual output (arXiv 1505.04597).

    Args:
        channels: image channels C (3 for RGB); input and output have the same.
        width: channels of the first level; level i has ``width * 2 ** i``.
        depth: number of 2x downsamplings (the bottleneck has ``width * 2 ** depth``
            channels); inputs are padded to a multiple of ``2 ** depth``.

    Shape:
        x: (B, C, H, W) -> (B, C, H, W); ``cond`` is ignored.
    """

    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"channels": 3, "width": 16, "depth": 2},
        "small": {"channels": 3, "width": 16, "depth": 3},
        "paper": {"channels": 3, "width": 64, "depth": 4},
    }

    def __init__(self, *, channels: int = 3, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        if channels < 1 or width < 1 or depth < 1:
            raise ValueError(f"UNet needs channels, width, depth >= 1, got {channels}, {width}, {depth}")
        self.multiple = 2**depth
        widths = [width * 2**i for i in range(depth + 1)]  # level 0 .. bottleneck
        self.stem = DoubleConv(channels, widths[0])
        self.pool = nn.AvgPool2d(2)
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], channels, 1)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.stem(x)  # (B, w, H, W)
        skips = [h]
        for block in self.down:
            h = block(self.pool(h))  # (B, 2w, H/2, W/2), ...
            skips.append(h)
        skips.pop()  # the bottleneck has no skip partner
        for up, merge in zip(self.up, self.merge, strict=True):
            h = up(h)  # (B, w_i, H_i, W_i)
            h = merge(torch.cat([h, skips.pop()], dim=1))  # (B, 2 w_i, ...) -> (B, w_i, ...)
        return self.head(h)  # (B, C, H, W) residual
