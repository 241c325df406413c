"""NAFNet: the Nonlinear Activation Free Network, an unconditional restoration baseline.

Chen, Chu, Zhang and Sun, "Simple Baselines for Image Restoration", ECCV 2022,
arXiv 2204.04676; structure and parameter names follow the authors' released code
(github.com/megvii-research/NAFNet, ``basicsr/models/archs/NAFNet_arch.py`` and
``arch_util.LayerNorm2d``), so their checkpoints load without renaming.

Mechanism:
    1. ``intro``: 3x3 conv from the image to ``width`` channels.
    2. U-shaped body: per encoder level a stack of NAF blocks, then a stride-2 2x2 conv
       doubling the channels (``downs``); ``middle_blks`` at the lowest scale; per decoder
       level a 1x1 conv doubling the channels + PixelShuffle(2) (``ups``, halving them), the
       encoder feature of that scale ADDED (not concatenated), then NAF blocks.
    3. ``ending``: 3x3 conv back to the image channels, the residual added to the input.

    A NAF block on (B, c, H, W) is two residual halves, each scaled by a learnable per-channel
    factor that starts at 0 (``beta``, ``gamma``: every block starts as the identity):
        y = x + beta * conv3(SCA(SG(dwconv3x3(conv1(LN(x))))))   (conv1: c -> 2c)
        z = y + gamma * conv5(SG(conv4(LN(y))))                  (conv4: c -> 2c)
    with SimpleGate ``SG(u) = u[:, :C/2] * u[:, C/2:]`` (the gating product replaces GELU)
    and Simplified Channel Attention ``SCA(u) = u * conv1x1(avgpool(u))`` (a per-channel
    scale computed from the global mean; no sigmoid). No nonlinear activation function
    (ReLU, GELU, Sigmoid, Softmax, ...) appears anywhere: the only nonlinearities are
    products and the LayerNorm's normalisation.

Sizes (3-channel images; ``num_parameters``):
    tiny:  width 8,  enc [1, 1, 1],    middle 1,  dec [1, 1, 1]    ->     75,355 parameters
    small: width 16, enc [1, 1, 2],    middle 2,  dec [1, 1, 1]    ->    438,387 parameters
    paper: width 32, enc [2, 2, 4, 8], middle 12, dec [2, 2, 2, 2] -> 29,159,715 parameters:
           the released NAFNet-SIDD-width32 (``options/train/SIDD/NAFNet-width32.yml``,
           39.97 dB on SIDD). The paper and README report MACs, not parameter counts; the
           released code gives the same 29,159,715 (29.2 M) for this configuration.

Deviations from the released code: the input is padded by :class:`Restorer` (reflect) rather
than with zeros; LayerNorm2d uses autograd instead of the hand-written backward (same math);
the unused dropout option (rate 0 in every released configuration) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from udcguard.models.base import RESTORERS, Restorer


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel, with a per-channel affine (``weight``, ``bias``).

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)  # (B, 1, H, W), biased
        y = (x - mu) / (var + self.eps).sqrt()  # (B, C, H, W)
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them. Shape: (B, 2C, H, W) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)  # (B, C, H, W) each
        return x1 * x2


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block (see the module docstring for the equations).

    Args:
        c: channels.
        dw_expand: channel expansion of the first (depth-wise conv) half (released: 2).
        ffn_expand: channel expansion of the feed-forward half (released: 2).

    Shape: (B, c, H, W) -> (B, c, H, W).
    """

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = c * dw_expand
        ffn = c * ffn_expand
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)  # depth-wise
        self.sg = SimpleGate()
        # Simplified Channel Attention: index 1 is the 1x1 conv ("sca.1.weight" as released)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(self.norm1(inp)))  # (B, dw, H, W)
        x = self.sg(x)  # (B, dw/2, H, W)
        x = x * self.sca(x)  # per-channel scale (B, dw/2, 1, 1) from the global mean
        y = inp + self.conv3(x) * self.beta  # (B, c, H, W)
        x = self.sg(self.conv4(self.norm2(y)))  # (B, ffn/2, H, W)
        return y + self.conv5(x) * self.gamma  # (B, c, H, W)


def _blocks(c: int, n: int, dw_expand: int, ffn_expand: int) -> nn.Sequential:
    return nn.Sequential(*(NAFBlock(c, dw_expand, ffn_expand) for _ in range(n)))


@RESTORERS.register("nafnet")
class NAFNet(Restorer):
    """NAFNet (arXiv 2204.04676): U-shaped stack of NAF blocks with additive skips.

    Args:
        channels: image channels C (3 for RGB).
        width: channels of the first level; level i has ``width * 2 ** i``.
        enc_blk_nums: NAF blocks per encoder level; its length is the number of 2x
            downsamplings (inputs are padded to a multiple of ``2 ** len(enc_blk_nums)``).
        middle_blk_num: NAF blocks at the lowest scale.
        dec_blk_nums: NAF blocks per decoder level (lowest scale first); same length.
        dw_expand, ffn_expand: channel expansions inside the blocks (released: 2, 2).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W); ``cond`` is ignored.
    """

    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"channels": 3, "width": 8, "enc_blk_nums": (1, 1, 1), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1)},
        "small": {
            "channels": 3,
            "width": 16,
            "enc_blk_nums": (1, 1, 2),
            "middle_blk_num": 2,
            "dec_blk_nums": (1, 1, 1),
        },
        "paper": {
            "channels": 3,
            "width": 32,
            "enc_blk_nums": (2, 2, 4, 8),
            "middle_blk_num": 12,
            "dec_blk_nums": (2, 2, 2, 2),
        },
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        width: int = 32,
        enc_blk_nums: Sequence[int] = (2, 2, 4, 8),
        middle_blk_num: int = 12,
        dec_blk_nums: Sequence[int] = (2, 2, 2, 2),
        dw_expand: int = 2,
        ffn_expand: int = 2,
    ) -> None:
        super().__init__()
        enc, dec = tuple(int(n) for n in enc_blk_nums), tuple(int(n) for n in dec_blk_nums)
        if len(enc) != len(dec):
            raise ValueError(f"NAFNet needs as many decoder as encoder levels, got {enc} and {dec}")
        if min(channels, width, dw_expand, ffn_expand) < 1 or min((middle_blk_num, *enc, *dec)) < 0:
            raise ValueError("NAFNet needs channels, width, expansions >= 1 and block counts >= 0")
        if dw_expand * width % 2 or ffn_expand * width % 2:
            raise ValueError("NAFNet needs even expanded widths (SimpleGate splits channels in two)")
        self.multiple = 2 ** len(enc)
        self.intro = nn.Conv2d(channels, width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for n in enc:
            self.encoders.append(_blocks(chan, n, dw_expand, ffn_expand))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = _blocks(chan, middle_blk_num, dw_expand, ffn_expand)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in dec:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(_blocks(chan, n, dw_expand, ffn_expand))
        self.ending = nn.Conv2d(width, channels, 3, padding=1)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.intro(x)  # (B, w, H, W)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            h = encoder(h)  # (B, w_i, H_i, W_i)
            skips.append(h)
            h = down(h)  # (B, 2 w_i, H_i / 2, W_i / 2)
        h = self.middle_blks(h)  # (B, w * 2 ** L, H / 2 ** L, W / 2 ** L)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            h = decoder(up(h) + skip)  # (B, w_i, H_i, W_i): additive skip
        return self.ending(h)  # (B, C, H, W) residual
