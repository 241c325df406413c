"""DWFormer: a Transformer-style UDC restorer whose token mixer is a depth-wise convolution.

Zhou, Song and Du, "Modular Degradation Simulation and Restoration for Under-Display
Camera", ACCV 2022, arXiv 2209.11455 (DWFormer is the restoration network of that paper;
MPGNet the degradation simulator). Structure, layer sizes and parameter names follow the
authors' released code (github.com/SummerParadise-0922/MPGNet, ``models/DWFormer.py``,
constructed with its defaults in ``train_DWFormer.py``), so their checkpoints
(``{"state_dict": nn.DataParallel(net).state_dict()}``) load through
:func:`~udcguard.io.checkpoints.load_official_checkpoint`. (The repository NGLSYSX/DWformer
named in some notes is an unrelated all-weather Restormer variant and was not used.)

Mechanism:
    1. Three scales: a 3x3 conv (``downproj1``) to e0 channels, stride-2 2x2 convs
       (``downproj2``/``3``) to e1, e2; a stack of blocks at each encoder scale.
    2. Decoder: 1x1 conv + PixelShuffle(2) (``upproj4``/``5``), concatenation with the
       encoder feature of that scale, 3x3 conv + ReLU (``fuse1``/``2``), a stack of blocks;
       a 3x3 conv (``out``) gives the residual added to the input.
    3. A block is a MetaFormer/Transformer block with self-attention replaced by convolution:
           x = x + inter(x),  inter = BN -> 1x1 conv -> depth-wise k x k conv (k = 5; the
               token mixer: groups == channels, no attention) -> ReLU -> global channel
               attention -> 1x1 conv
           x = x + intra(x),  intra = BN -> 1x1 conv (r x expansion) -> ReLU -> 1x1 conv (MLP)
    4. Global channel attention (the paper's module "to aggregate global information, critical
       for brightness recovery"): a 1x1 conv scores every pixel, the scores are turned into
       weights over all H x W positions, the weighted sum of the features is a (B, C) context
       vector, and an MLP (C -> C / se_ratio -> C, ReLU, Sigmoid) maps it to per-channel
       factors in (0, 1) that scale the features.

Where we had to decide:
    - The released ``Global_Block`` applies its softmax to a singleton dimension, so every
      weight is 1: the context is the plain SUM over pixels (the 1x1 scoring conv gets no
      gradient, and the context grows with the image size). ``ca_pooling="softmax"`` (our
      default, every preset) implements the described attention pooling: softmax over the
      H x W positions, i.e. a learned weighted average, resolution independent.
      ``ca_pooling="sum"`` reproduces the released forward exactly (use it with released
      weights; such a model then matches no preset for ``restorer_spec``).
    - Reflect padding of the depth-wise / fuse / out convs, as released, falls back to
      replicate padding where a feature map is too small to reflect (tiny inputs).
    - Convs and linears inside blocks start from the released truncated normal with gain
      (8 * depth) ** -1/4; the released code fixes depth = 36 (= its number of blocks), we
      use the preset's number of blocks (identical for ``paper``).
    - Norms are BatchNorm2d as released (its running statistics are part of the state).

Sizes (3-channel images; ``num_parameters``; dims / MLP ratios / blocks per stage, encoder
scales 1, 1/2, 1/4 then decoder 1/2, 1):
    tiny:  (12, 24, 48, 24, 12), ratios 2,          blocks (1, 1, 2, 1, 1) ->    79,833 parameters
    small: (16, 32, 64, 32, 16), ratios (2,4,4,2,2), blocks (2, 2, 4, 2, 2) ->   307,279 parameters
    paper: (24, 48, 96, 48, 24), ratios (2,4,4,2,2), blocks (8, 8, 8, 6, 6), se_ratio 1, k 5
           -> 1,447,047 parameters: the released default configuration. The paper publishes
           no parameter count; this is the released code's count (same modules and shapes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.models.base import RESTORERS, Restorer

CA_POOLINGS = ("softmax", "sum")


class ReflectConv2d(nn.Conv2d):
    """Conv with "same" reflect padding (replicate where a side is too short to reflect).

    Keeps nn.Conv2d's parameters (``weight``, ``bias``). Shape: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0, groups=groups)
        self.pad = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p:
            mode = "reflect" if p < min(x.shape[-2:]) else "replicate"
            x = F.pad(x, (p, p, p, p), mode=mode)  # (B, C_in, H + 2p, W + 2p)
        return super().forward(x)


class GlobalChannelAttention(nn.Module):
    """Attention-pooled context -> MLP -> sigmoid -> per-channel scale (the released ``Global_Block``).

    Args:
        dim: channels C.
        ratio: MLP reduction (hidden C // ratio).
        pooling: "softmax" (weights over the H x W positions from a 1x1 conv) or "sum" (the
            released code's effective pooling: every weight 1).

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, ratio: int = 1, pooling: str = "softmax") -> None:
        super().__init__()
        self.pooling = pooling
        self.pwconv = nn.Conv2d(dim, 1, 1)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim // ratio, bias=False),
            nn.ReLU(),
            nn.Linear(dim // ratio, dim, bias=False),
            nn.Sigmoid(),
        )

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel factors in (0, 1). Shape: (B, C, H, W) -> (B, C, 1, 1)."""
        b, c = x.shape[:2]
        feats = x.flatten(2)  # (B, C, HW)
        if self.pooling == "softmax":
            weights = self.pwconv(x).flatten(2).softmax(dim=-1)  # (B, 1, HW), sums to 1
            context = torch.bmm(weights, feats.transpose(1, 2)).squeeze(1)  # (B, C)
        else:
            context = feats.sum(dim=-1)  # (B, C)
        return self.mlp(context).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class Block(nn.Module):
    """Depth-wise-conv token mixer (``inter``) and MLP (``intra``), each pre-norm and residual.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, mlp_ratio: int, se_ratio: int, kernel_size: int, pooling: str, depth: int) -> None:
        super().__init__()
        self.inter = nn.Sequential(
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 1),
            ReflectConv2d(dim, dim, kernel_size, groups=dim),  # token mixer: depth-wise
            nn.ReLU(),
            GlobalChannelAttention(dim, se_ratio, pooling),
            nn.Conv2d(dim, dim, 1),
        )
        self.intra = nn.Sequential(
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim * mlp_ratio, 1),
            nn.ReLU(),
            nn.Conv2d(dim * mlp_ratio, dim, 1),
        )
        gain = (8 * depth) ** (-1 / 4)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
                nn.init.trunc_normal_(m.weight, std=gain * math.sqrt(2.0 / (fan_in + fan_out)), a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.inter(x)  # token mixing + global channel attention
        return x + self.intra(x)  # channel MLP


class BasicLayer(nn.Module):
    """``n`` blocks in sequence (``blocks.i`` as released). Shape: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(
        self, n: int, dim: int, mlp_ratio: int, se_ratio: int, kernel_size: int, pooling: str, depth: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, mlp_ratio, se_ratio, kernel_size, pooling, depth) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 1), nn.PixelShuffle(2))


@RESTORERS.register("dwformer")
class DWFormer(Restorer):
    """DWFormer (arXiv 2209.11455): U-shaped depth-wise-conv Transformer with global channel attention.

    Args:
        channels: image channels C (3).
        emb_dims: widths of the five stages (encoder scales 1, 1/2, 1/4, decoder 1/2, 1); the
            decoder widths must equal the encoder widths of their scale (released: 24, 48, 96,
            48, 24).
        mlp_ratios: MLP expansion per stage (released: 2, 4, 4, 2, 2).
        depths: blocks per stage (released ``layer_num``: 8, 8, 8, 6, 6).
        se_ratio: channel-attention MLP reduction (released: 1).
        kernel_size: odd kernel of the depth-wise token mixer (released: 5).
        ca_pooling: "softmax" (attention pooling, as described) or "sum" (released forward).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W); ``cond`` is ignored. Inputs are padded to a multiple of 4.
    """

    multiple: int = 4
    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "channels": 3,
            "emb_dims": (12, 24, 48, 24, 12),
            "mlp_ratios": (2, 2, 2, 2, 2),
            "depths": (1, 1, 2, 1, 1),
        },
        "small": {
            "channels": 3,
            "emb_dims": (16, 32, 64, 32, 16),
            "mlp_ratios": (2, 4, 4, 2, 2),
            "depths": (2, 2, 4, 2, 2),
        },
        "paper": {
            "channels": 3,
            "emb_dims": (24, 48, 96, 48, 24),
            "mlp_ratios": (2, 4, 4, 2, 2),
            "depths": (8, 8, 8, 6, 6),
        },
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        emb_dims: Sequence[int] = (24, 48, 96, 48, 24),
        mlp_ratios: Sequence[int] = (2, 4, 4, 2, 2),
        depths: Sequence[int] = (8, 8, 8, 6, 6),
        se_ratio: int = 1,
        kernel_size: int = 5,
        ca_pooling: str = "softmax",
    ) -> None:
        super().__init__()
        d, r, n = (tuple(int(v) for v in s) for s in (emb_dims, mlp_ratios, depths))
        if not len(d) == len(r) == len(n) == 5:
            raise ValueError(f"DWFormer needs 5 stages of emb_dims, mlp_ratios, depths, got {d}, {r}, {n}")
        if d[3] != d[1] or d[4] != d[0]:
            raise ValueError(f"DWFormer decoder widths must mirror the encoder's (e0, e1, e2, e1, e0), got {d}")
        if min(channels, *d, *r, se_ratio) < 1 or min(n) < 0 or any(v % se_ratio for v in d):
            raise ValueError("DWFormer needs positive widths / ratios (widths divisible by se_ratio), depths >= 0")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DWFormer kernel_size must be odd and >= 1, got {kernel_size}")
        if ca_pooling not in CA_POOLINGS:
            raise ValueError(f"DWFormer ca_pooling must be one of {', '.join(CA_POOLINGS)}, got {ca_pooling!r}")
        depth = max(1, sum(n))

        def layer(i: int) -> BasicLayer:
            return BasicLayer(n[i], d[i], r[i], se_ratio, kernel_size, ca_pooling, depth)

        self.downproj1 = nn.Conv2d(channels, d[0], 3, padding=1)
        self.block1 = layer(0)
        self.downproj2 = nn.Conv2d(d[0], d[1], 2, stride=2)
        self.block2 = layer(1)
        self.downproj3 = nn.Conv2d(d[1], d[2], 2, stride=2)
        self.block3 = layer(2)
        self.upproj4 = _up(d[2], d[3])
        self.fuse1 = nn.Sequential(ReflectConv2d(2 * d[3], d[3], 3), nn.ReLU())
        self.block4 = layer(3)
        self.upproj5 = _up(d[3], d[4])
        self.fuse2 = nn.Sequential(ReflectConv2d(2 * d[4], d[4], 3), nn.ReLU())
        self.block5 = layer(4)
        self.out = ReflectConv2d(d[4], channels, 3)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        skip1 = self.block1(self.downproj1(x))  # (B, e0, H, W)
        skip2 = self.block2(self.downproj2(skip1))  # (B, e1, H/2, W/2)
        h = self.block3(self.downproj3(skip2))  # (B, e2, H/4, W/4)
        h = self.fuse1(torch.cat([self.upproj4(h), skip2], dim=1))  # (B, 2 e1, ...) -> (B, e1, H/2, W/2)
        h = self.block4(h)
        h = self.fuse2(torch.cat([self.upproj5(h), skip1], dim=1))  # (B, 2 e0, ...) -> (B, e0, H, W)
        h = self.block5(h)
        return self.out(h)  # (B, C, H, W) residual
